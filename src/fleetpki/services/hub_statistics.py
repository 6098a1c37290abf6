"""Registry and service statistics of the built-in hub (ref §3.2 ``/statistics/*``)."""

from __future__ import annotations

from dataclasses import dataclass

from fleetpki.services.hub_methods import HubMethodService
from fleetpki.services.hub_nodes import HubNodeService
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
        nodes: the other hub nodes on the database, which report theirs in their heartbeats.
    """

    def __init__(self, store: Store, methods: HubMethodService, nodes: HubNodeService) -> None:
        self._store = store
        self._methods = methods
        self._nodes = nodes

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
        return invoker.holds(device_id) if invoker is not None else None

    def connected_devices(self) -> int:
        """Devices connected now, on every hub node: this process's live hub counts its own,
        the other live nodes' counts come from their heartbeats (a few seconds old).

        With no hub node running, the registry's count: what MQTT servers recorded
        (``record_connections``).
        """
        invoker = self._methods.current()
        here = invoker.node if invoker is not None else None
        others = [n for n in self._nodes.live() if n.name != here]
        if invoker is None and not others:
            with self._store.transaction() as tx:
                return tx.hub_devices.count_connected()
        own = invoker.connected_device_count() if invoker is not None else 0
        return own + sum(n.connected for n in others)
