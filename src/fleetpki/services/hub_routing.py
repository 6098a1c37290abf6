"""Non-telemetry events routed to the built-in endpoint: twin change and connection state events.

Azure IoT Hub can route twin change events to its built-in Event Hubs-compatible
endpoint when a route for that data source exists (none does on a new hub;
learn.microsoft.com, iot-hub "IoT Hub non-telemetry event schemas"). The built-in hub
does the same when the setting ``hub_route_twin_change_events`` is on: each event is
written, in the transaction of the change itself, into the stored telemetry as a
message of the device, so readers of the Event Hub (and of ``/v1/hub/messages``) see
it in its place in the device's stream. Device connection state events are routed
the same way when ``hub_route_connection_state_events`` is on: written in the
transaction that records the device's ``connectionState`` in the registry
(`fleetpki.services.hub_devices.HubDeviceService.record_connections`).

Shapes, as documented: the application properties ``hubName``, ``deviceId``,
``operationTimestamp``, ``opType`` and ``iothub-message-schema``; the system
properties ``iothub-message-source``, ``correlation-id`` (a new id per event) and
``user-id`` (the hub's name), with JSON content. Twin change events: ``updateTwin`` or
``replaceTwin``, ``twinChangeNotification``, ``twinChangeEvents``, a body with the
changed properties and the new ``version``. Connection state events: ``deviceConnected``
or ``deviceDisconnected``, ``deviceConnectionStateNotification``,
``deviceConnectionStateEvents``, a body ``{"sequenceNumber": "..."}``: 64 hexadecimal
digits, strictly increasing per device, compared as strings (:func:`sequence_number`).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetpki.services.ports import UnitOfWork
from fleetpki.services.ports.hub import TelemetryInput

__all__ = [
    "EventRouting",
    "route_connection_state_in",
    "route_twin_change_in",
    "sequence_number",
]


@dataclass(frozen=True, slots=True)
class EventRouting:
    """Which non-telemetry events reach the built-in endpoint.

    Attributes:
        hub_name: the ``hubName`` the events carry.
        twin_changes: route twin change events.
        connection_states: route device connection state events.
    """

    hub_name: str
    twin_changes: bool = False
    connection_states: bool = False


def _timestamp(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _store(
    tx: UnitOfWork,
    routing: EventRouting,
    device_id: str,
    *,
    source: str,
    schema: str,
    op_type: str,
    body: Mapping[str, Any],
    now: dt.datetime,
) -> None:
    tx.hub_telemetry.add_batch(
        [
            TelemetryInput(
                device_id=device_id,
                enqueued_at=now,
                body=json.dumps(body, separators=(",", ":")).encode(),
                system_properties={
                    "iothub-message-source": source,
                    "correlation-id": uuid.uuid4().hex[:12],
                    "user-id": routing.hub_name,
                    "content-type": "application/json",
                    "content-encoding": "utf-8",
                },
                properties={
                    "hubName": routing.hub_name,
                    "deviceId": device_id,
                    "operationTimestamp": _timestamp(now),
                    "iothub-message-schema": schema,
                    "opType": op_type,
                },
            )
        ]
    )


def route_twin_change_in(
    tx: UnitOfWork,
    routing: EventRouting | None,
    device_id: str,
    *,
    op_type: str,
    version: int,
    changed: Mapping[str, Mapping[str, Any]],
    now: dt.datetime,
) -> None:
    """Store a twin change event (``changed``: ``{"desired"|"reported": patch}``), if routed."""
    if routing is None or not routing.twin_changes:
        return
    _store(
        tx,
        routing,
        device_id,
        source="twinChangeEvents",
        schema="twinChangeNotification",
        op_type=op_type,
        body={"version": version, "properties": {k: dict(v) for k, v in changed.items()}},
        now=now,
    )


#: 1601-01-01, the epoch of Windows FILETIME (100 ns ticks), which Azure's sequence
#: numbers carry in their second 16 digits.
_FILETIME_EPOCH = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)


def sequence_number(at: dt.datetime) -> str:
    """A connection state event's ``sequenceNumber``: 64 upper-case hex digits.

    As Azure's: 16 zeros, then the time of the change in FILETIME ticks (16 digits),
    then zeros. Strictly increasing as long as ``at`` is, which
    `fleetpki.services.hub_devices.record_connections_in` makes sure of per device.
    """
    ticks = (at.astimezone(dt.UTC) - _FILETIME_EPOCH) // dt.timedelta(microseconds=1) * 10
    return f"{0:016X}{ticks:016X}{0:032X}"


def route_connection_state_in(
    tx: UnitOfWork,
    routing: EventRouting | None,
    device_id: str,
    *,
    connected: bool,
    at: dt.datetime,
) -> None:
    """Store a device connection state event for a change at ``at``, if routed."""
    if routing is None or not routing.connection_states:
        return
    _store(
        tx,
        routing,
        device_id,
        source="deviceConnectionStateEvents",
        schema="deviceConnectionStateNotification",
        op_type="deviceConnected" if connected else "deviceDisconnected",
        body={"sequenceNumber": sequence_number(at)},
        now=at,
    )
