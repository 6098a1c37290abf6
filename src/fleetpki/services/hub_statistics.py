"""Registry and service statistics of the built-in hub (ref §3.2 ``/statistics/*``)."""

from __future__ import annotations

from dataclasses import dataclass

from fleetpki.services.hub_methods import HubMethodService
from fleetpki.services.ports import Store

__all__ = ["HubStatisticsService", "RegistryStatistics"]


@dataclass(frozen=True, slots=True)
class RegistryStatistics:
    """``GET /statistics/devices`` (ref §3.2)."""

    total: int
    enabled: int
    disabled: int


class HubStatisticsService:
    """Device counts.

    Args:
        store: the database.
        methods: the application's live hub, which knows its connections first-hand.
    """

    def __init__(self, store: Store, methods: HubMethodService) -> None:
        self._store = store
        self._methods = methods

    def devices(self) -> RegistryStatistics:
        """Devices by status (ref §3.2 ``/statistics/devices``)."""
        with self._store.transaction() as tx:
            counts = tx.hub_devices.count_by_status()
        enabled = int(counts.get("enabled", 0))
        disabled = int(counts.get("disabled", 0))
        return RegistryStatistics(total=enabled + disabled, enabled=enabled, disabled=disabled)

    def is_connected(self, device_id: str) -> bool | None:
        """Whether the device is connected to the live hub of this process now; ``None``
        when no hub runs here (the registry's ``connectionState`` is then all there is).
        """
        invoker = self._methods.current()
        return invoker.is_device_connected(device_id) if invoker is not None else None

    def connected_devices(self) -> int:
        """Devices connected now: the live hub's count when one runs here, else the registry's.

        The registry's count is what MQTT servers recorded (``record_connection``).
        """
        invoker = self._methods.current()
        if invoker is not None:
            return invoker.connected_device_count()
        with self._store.transaction() as tx:
            return tx.hub_devices.count_connected()
