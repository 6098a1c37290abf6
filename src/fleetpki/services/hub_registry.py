"""Transitional: the hub registry's use cases inside a caller's session.

The registry's use cases live in :mod:`fleetpki.services.hub_devices`,
:mod:`fleetpki.services.hub_twins` and :mod:`fleetpki.services.hub_statistics` (services
built by the application: ``fleet.hub_devices``, ``fleet.hub_twins``,
``fleet.hub_statistics``); device authentication on connect is
:mod:`fleetpki.services.hub_authentication`. What is left here goes when the last
caller that holds a session moves to those services.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from fleetpki.services.events import unit_of
from fleetpki.services.hub_devices import (
    AuthType,
    DeviceSpec,
    DeviceStatus,
    delete_device_in,
    put_device_in,
    record_connection_in,
    require_device,
    set_status_in,
)
from fleetpki.services.hub_statistics import RegistryStatistics
from fleetpki.services.hub_twins import patch_reported_in, patch_twin_in, replace_twin_in
from fleetpki.store.hub_models import HubDevice

__all__ = [
    "AuthType",
    "DeviceSpec",
    "DeviceStatus",
    "RegistryStatistics",
    "connected_device_count",
    "delete_device",
    "get_device",
    "get_twin",
    "list_devices",
    "patch_reported",
    "patch_twin",
    "put_device",
    "record_connection",
    "registry_statistics",
    "replace_twin",
    "set_device_status",
]


# --------------------------------------------------------------------------- transitional
# Session-taking functions for callers not yet moved to the services (the MQTT server's
# store backend, demo, benchmarks, test fixtures). Each is the service's use case inside
# the caller's transaction and returns the record; they go when those callers move.


def get_device(session: Any, device_id: str) -> HubDevice:
    """Transitional: :meth:`HubDeviceService.get` in ``session``'s transaction.

    Raises:
        NotFoundError: ``hub.device_not_found``.
    """
    return require_device(unit_of(session), device_id)


def list_devices(session: Any, *, limit: int | None = None) -> list[HubDevice]:
    """Transitional: :meth:`HubDeviceService.list` in ``session``'s transaction."""
    return list(unit_of(session).hub_devices.list(limit=limit))


def put_device(
    session: Any, spec: DeviceSpec, *, now: dt.datetime, if_match: str | None = None
) -> tuple[HubDevice, bool]:
    """Transitional: :meth:`HubDeviceService.put` in ``session``'s transaction."""
    return put_device_in(unit_of(session), spec, now=now, if_match=if_match)


def set_device_status(
    session: Any,
    device_id: str,
    status: DeviceStatus,
    *,
    now: dt.datetime,
    reason: str | None = None,
    if_match: str | None = None,
) -> HubDevice:
    """Transitional: :meth:`HubDeviceService.set_status` in ``session``'s transaction."""
    return set_status_in(
        unit_of(session), device_id, status, now=now, reason=reason, if_match=if_match
    )


def delete_device(session: Any, device_id: str, *, if_match: str | None = None) -> None:
    """Transitional: :meth:`HubDeviceService.delete` in ``session``'s transaction."""
    delete_device_in(unit_of(session), device_id, if_match=if_match)


def record_connection(session: Any, device_id: str, *, connected: bool, now: dt.datetime) -> None:
    """Transitional: :meth:`HubDeviceService.record_connection` in ``session``."""
    record_connection_in(unit_of(session), device_id, connected=connected, now=now)


def registry_statistics(session: Any) -> RegistryStatistics:
    """Transitional: :meth:`HubStatisticsService.devices` in ``session``'s transaction."""
    counts = unit_of(session).hub_devices.count_by_status()
    enabled = int(counts.get("enabled", 0))
    disabled = int(counts.get("disabled", 0))
    return RegistryStatistics(total=enabled + disabled, enabled=enabled, disabled=disabled)


def connected_device_count(session: Any) -> int:
    """Transitional: the registry's connected count in ``session``'s transaction."""
    return unit_of(session).hub_devices.count_connected()


def get_twin(session: Any, device_id: str) -> HubDevice:
    """Transitional: :meth:`HubTwinService.get` in ``session``'s transaction (the record)."""
    return require_device(unit_of(session), device_id)


def patch_twin(
    session: Any,
    device_id: str,
    document: Mapping[str, Any],
    *,
    now: dt.datetime,
    if_match: str | None = None,
) -> HubDevice:
    """Transitional: :meth:`HubTwinService.patch` in ``session``'s transaction."""
    return patch_twin_in(unit_of(session), device_id, document, if_match=if_match)


def replace_twin(
    session: Any,
    device_id: str,
    document: Mapping[str, Any],
    *,
    now: dt.datetime,
    if_match: str | None = None,
) -> HubDevice:
    """Transitional: :meth:`HubTwinService.replace` in ``session``'s transaction."""
    return replace_twin_in(unit_of(session), device_id, document, if_match=if_match)


def patch_reported(
    session: Any, device_id: str, patch: Mapping[str, Any], *, now: dt.datetime
) -> int:
    """Transitional: :meth:`HubTwinService.patch_reported` in ``session``'s transaction."""
    return patch_reported_in(unit_of(session), device_id, patch, now=now)
