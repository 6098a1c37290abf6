"""Hub message storage: device-to-cloud telemetry and the cloud-to-device queue (ref §1.5).

Telemetry is written in batches, many rows in one statement and one transaction,
because the MQTT server acknowledges a QoS 1 publish only once it is durable.
Cloud-to-device messages wait as ``pending`` until the device's PUBACK, so they are
delivered after a reconnect.
"""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetpki.errors import ValidationError
from fleetpki.services.context import Actor, Clock
from fleetpki.services.hub_devices import require_device
from fleetpki.services.hub_notices import tell_hub_nodes
from fleetpki.services.notifications import C2DQueued
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.services.ports.hub import TelemetryInput
from fleetpki.store.hub_models import HubC2DMessage, HubMessage

__all__ = [
    "ACK_PROPERTY",
    "EXPIRY_PROPERTY",
    "MAX_C2D_BYTES",
    "C2DFeedback",
    "C2DMessageView",
    "HubMessageService",
    "HubMessageView",
    "TelemetryInput",
]

#: Azure's limit for a cloud-to-device message body.
MAX_C2D_BYTES = 64 * 1024
#: The property naming the feedback a message asks for (Azure's ``iothub-ack``: ``none``,
#: ``positive``, ``negative`` or ``full``).
ACK_PROPERTY = "iothub-ack"
_ACK_ON_SUCCESS = ("positive", "full")
_ACK_ON_EXPIRY = ("negative", "full")
#: The property holding a message's absolute expiry (ISO 8601, UTC).
EXPIRY_PROPERTY = "$.exp"


@dataclass(frozen=True, slots=True)
class HubMessageView:
    """One stored device-to-cloud message."""

    id: int
    device_id: str
    module_id: str | None
    enqueued_at: dt.datetime
    body: bytes
    system_properties: dict[str, Any]
    properties: dict[str, Any]


@dataclass(frozen=True, slots=True)
class C2DMessageView:
    """One cloud-to-device message and its delivery state (``pending``, ``delivered``)."""

    message_id: str
    device_id: str
    body: bytes
    properties: dict[str, str]
    status: str
    created_at: dt.datetime
    delivered_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class C2DFeedback:
    """The outcome of one cloud-to-device message, owed to the feedback receiver.

    Attributes:
        row_id: which queued message (to mark the feedback taken).
        original_message_id / device_id / device_generation_id: as Azure names them.
        status_code: ``Success`` (the device acknowledged it) or ``Expired``.
        description: Azure's text for the status.
        enqueued_at: when the outcome happened.
    """

    row_id: int
    original_message_id: str
    device_id: str
    device_generation_id: str
    status_code: str
    description: str
    enqueued_at: dt.datetime


def _ack(message: HubC2DMessage) -> str:
    return str(message.properties.get(ACK_PROPERTY) or "none").lower()


def _expired(message: HubC2DMessage, now: dt.datetime) -> bool:
    text = message.properties.get(EXPIRY_PROPERTY)
    if not text:
        return False
    try:
        expiry = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return False
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=dt.UTC)
    return expiry <= now


def _message_view(row: HubMessage) -> HubMessageView:
    return HubMessageView(
        id=row.id,
        device_id=row.device_id,
        module_id=row.module_id,
        enqueued_at=row.enqueued_at,
        body=bytes(row.body),
        system_properties=copy.deepcopy(row.system_properties),
        properties=copy.deepcopy(row.properties),
    )


def _c2d_view(row: HubC2DMessage) -> C2DMessageView:
    return C2DMessageView(
        message_id=row.message_id,
        device_id=row.device_id,
        body=bytes(row.body),
        properties=dict(row.properties),
        status=row.status,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
    )


def enqueue_in(
    tx: UnitOfWork,
    device_id: str,
    body: bytes,
    *,
    now: dt.datetime,
    properties: Mapping[str, str] | None = None,
    message_id: str | None = None,
) -> HubC2DMessage:
    """:meth:`HubMessageService.enqueue_c2d` inside the caller's unit of work."""
    device = require_device(tx, device_id, for_update=True)
    if len(body) > MAX_C2D_BYTES:
        raise ValidationError(
            "hub.message_too_large", f"a cloud-to-device message is at most {MAX_C2D_BYTES} bytes"
        )
    message = HubC2DMessage(
        device_id=device_id,
        message_id=message_id or str(uuid.uuid4()),
        body=bytes(body),
        properties=dict(properties or {}),
        status="pending",
        created_at=now,
    )
    tx.hub_c2d.add(message)
    device.c2d_count += 1
    tell_hub_nodes(tx, C2DQueued(device_id), at=now)
    return message


def mark_delivered_in(tx: UnitOfWork, device_id: str, message_id: str, *, now: dt.datetime) -> None:
    """:meth:`HubMessageService.mark_c2d_delivered` inside the caller's unit of work."""
    message = tx.hub_c2d.find_pending(device_id, message_id)
    if message is None:
        return
    message.status = "delivered"
    message.delivered_at = now
    message.feedback_due = _ack(message) in _ACK_ON_SUCCESS
    device = tx.hub_devices.get(device_id, for_update=True)
    if device is not None and device.c2d_count > 0:
        device.c2d_count -= 1


class HubMessageService:
    """Telemetry storage and the cloud-to-device queue of the built-in hub.

    Args:
        store: the database.
        clock: the source of "now".
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def store_telemetry(self, batch: Sequence[TelemetryInput]) -> None:
        """Insert a batch of telemetry in one statement; durable when this returns."""
        if not batch:
            return
        with self._store.transaction() as tx:
            tx.hub_telemetry.add_batch(batch)

    def list_telemetry(
        self, *, device_id: str | None = None, after_id: int | None = None, limit: int = 100
    ) -> list[HubMessageView]:
        """Stored telemetry in arrival order, after ``after_id`` (for paging and live tails).

        ``limit`` is clamped to 1..1000.
        """
        with self._store.transaction() as tx:
            rows = tx.hub_telemetry.list(device_id=device_id, after_id=after_id, limit=limit)
            return [_message_view(r) for r in rows]

    def recent_telemetry(self, device_id: str, *, limit: int = 50) -> list[HubMessageView]:
        """The device's newest ``limit`` (1..1000) messages, in arrival order."""
        with self._store.transaction() as tx:
            rows = tx.hub_telemetry.recent(device_id, limit)
            return [_message_view(r) for r in reversed(rows)]

    def latest_id(self, device_id: str | None = None) -> int:
        """The newest stored message id (of one device, or of all); 0 when there is none."""
        with self._store.transaction() as tx:
            return tx.hub_telemetry.latest_id(device_id)

    def enqueue_c2d(
        self,
        device_id: str,
        body: bytes,
        *,
        properties: Mapping[str, str] | None = None,
        message_id: str | None = None,
    ) -> C2DMessageView:
        """Queue a cloud-to-device message; the connected device is told after commit.

        Raises:
            NotFoundError: ``hub.device_not_found``.
            ValidationError: ``hub.message_too_large`` over :data:`MAX_C2D_BYTES`.
        """
        with self._store.transaction() as tx:
            message = enqueue_in(
                tx,
                device_id,
                body,
                now=self._clock(),
                properties=properties,
                message_id=message_id,
            )
            return _c2d_view(message)

    def send_c2d(
        self,
        actor: Actor,
        device_id: str,
        body: bytes,
        *,
        properties: Mapping[str, str] | None = None,
        message_id: str | None = None,
    ) -> C2DMessageView:
        """Queue a cloud-to-device message on behalf of ``actor``, with an audit entry.

        Raises:
            NotFoundError: ``hub.device_not_found``.
            ValidationError: ``hub.message_too_large``.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            message = enqueue_in(
                tx, device_id, body, now=now, properties=properties, message_id=message_id
            )
            tx.hub_audit.record(
                actor_id=actor.principal_id,
                source=actor.source,
                action="hub.c2d_send",
                object_type="hub_device",
                object_id=device_id,
                at=now,
                details={"message_id": message.message_id, "bytes": len(message.body)},
            )
            return _c2d_view(message)

    def pending_c2d(self, device_id: str) -> list[C2DMessageView]:
        """The device's undelivered cloud-to-device messages, oldest first.

        A message past its expiry (``$.exp``) is not delivered: it becomes ``expired``
        here, owing an ``Expired`` feedback record when its ``iothub-ack`` asks for one.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            live = []
            for message in tx.hub_c2d.pending(device_id):
                if not _expired(message, now):
                    live.append(_c2d_view(message))
                    continue
                message.status = "expired"
                message.delivered_at = now
                message.feedback_due = _ack(message) in _ACK_ON_EXPIRY
                device = tx.hub_devices.get(device_id)
                if device is not None and device.c2d_count > 0:
                    device.c2d_count -= 1
            return live

    def due_feedback(self, limit: int = 100) -> list[C2DFeedback]:
        """Outcomes owed to the feedback receiver, oldest first, at most ``limit``."""
        with self._store.transaction() as tx:
            records = []
            generations: dict[str, str] = {}
            for message in tx.hub_c2d.feedback_due(limit):
                if message.device_id not in generations:
                    device = tx.hub_devices.get(message.device_id)
                    generations[message.device_id] = "" if device is None else device.generation_id
                success = message.status == "delivered"
                records.append(
                    C2DFeedback(
                        row_id=message.id,
                        original_message_id=message.message_id,
                        device_id=message.device_id,
                        device_generation_id=generations[message.device_id],
                        status_code="Success" if success else "Expired",
                        description="Success" if success else "Message expired",
                        enqueued_at=message.delivered_at or message.created_at,
                    )
                )
            return records

    def complete_feedback(self, row_ids: Sequence[int]) -> None:
        """The feedback receiver accepted these records: they are owed no more."""
        with self._store.transaction() as tx:
            for message in tx.hub_c2d.by_ids(list(row_ids)):
                message.feedback_due = False

    def mark_c2d_delivered(self, device_id: str, message_id: str) -> None:
        """Record the device's PUBACK for a message; unknown or repeated ids are ignored."""
        with self._store.transaction() as tx:
            mark_delivered_in(tx, device_id, message_id, now=self._clock())
