"""Non-telemetry events routed to the built-in endpoint: twin change events.

Azure IoT Hub can route twin change events to its built-in Event Hubs-compatible
endpoint when a route for that data source exists (none does on a new hub;
learn.microsoft.com, iot-hub "IoT Hub non-telemetry event schemas"). The built-in hub
does the same when the setting ``hub_route_twin_change_events`` is on: each event is
written, in the transaction of the change itself, into the stored telemetry as a
message of the device, so readers of the Event Hub (and of ``/v1/hub/messages``) see
it in its place in the device's stream. (Device connection state events are not
routed: the hub keeps connection state in memory and never records it in the
registry.)

Shapes, as documented: the application properties ``hubName``, ``deviceId``,
``operationTimestamp``, ``opType`` (``updateTwin``, ``replaceTwin``) and
``iothub-message-schema`` (``twinChangeNotification``); the system property
``iothub-message-source`` (``twinChangeEvents``); a JSON body with the changed
properties and the new ``version``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetpki.services.ports import UnitOfWork
from fleetpki.services.ports.hub import TelemetryInput

__all__ = ["EventRouting", "route_twin_change_in"]


@dataclass(frozen=True, slots=True)
class EventRouting:
    """Which non-telemetry events reach the built-in endpoint.

    Attributes:
        hub_name: the ``hubName`` the events carry.
        twin_changes: route twin change events.
    """

    hub_name: str
    twin_changes: bool = False


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
