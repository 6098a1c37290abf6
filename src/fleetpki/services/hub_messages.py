"""Hub message storage: device-to-cloud telemetry and the cloud-to-device queue (ref §1.5).

Telemetry is written in batches, many rows in one statement and one transaction,
because the MQTT server acknowledges a QoS 1 publish only once it is durable.
Cloud-to-device messages wait as ``pending`` until the device's PUBACK, so they are
delivered after a reconnect.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from fleetpki.errors import NotFoundError, ValidationError
from fleetpki.services.events import notify_after_commit
from fleetpki.services.notifications import C2DQueued
from fleetpki.store.hub_models import HubC2DMessage, HubDevice, HubMessage

__all__ = [
    "MAX_C2D_BYTES",
    "TelemetryInput",
    "enqueue_c2d",
    "list_messages",
    "mark_c2d_delivered",
    "pending_c2d",
    "store_telemetry",
]

#: Azure's limit for a cloud-to-device message body.
MAX_C2D_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class TelemetryInput:
    """One device-to-cloud message to store.

    Attributes:
        system_properties: decoded ``$.`` properties by their Azure names.
        properties: application properties, decoded exactly (a key without ``=``
            has the value ``None``).
    """

    device_id: str
    enqueued_at: dt.datetime
    body: bytes
    system_properties: Mapping[str, str] = field(default_factory=dict)
    properties: Mapping[str, str | None] = field(default_factory=dict)
    module_id: str | None = None


def store_telemetry(session: Session, batch: Sequence[TelemetryInput]) -> None:
    """Insert a batch of telemetry in one statement; durable once the caller commits."""
    if not batch:
        return
    session.execute(
        insert(HubMessage),
        [
            {
                "device_id": item.device_id,
                "module_id": item.module_id,
                "enqueued_at": item.enqueued_at,
                "body": bytes(item.body),
                "system_properties": dict(item.system_properties),
                "properties": dict(item.properties),
            }
            for item in batch
        ],
    )


def list_messages(
    session: Session,
    *,
    device_id: str | None = None,
    after_id: int | None = None,
    limit: int = 100,
) -> list[HubMessage]:
    """Stored telemetry in arrival order, after ``after_id`` (for paging and live tails)."""
    query = select(HubMessage).order_by(HubMessage.id).limit(max(1, min(limit, 1000)))
    if device_id is not None:
        query = query.where(HubMessage.device_id == device_id)
    if after_id is not None:
        query = query.where(HubMessage.id > after_id)
    return list(session.scalars(query))


def enqueue_c2d(
    session: Session,
    device_id: str,
    body: bytes,
    *,
    now: dt.datetime,
    properties: Mapping[str, str] | None = None,
    message_id: str | None = None,
) -> HubC2DMessage:
    """Queue a cloud-to-device message; the connected device is told after commit.

    Raises:
        NotFoundError: ``hub.device_not_found``.
        ValidationError: ``hub.message_too_large`` over :data:`MAX_C2D_BYTES`.
    """
    device = session.get(HubDevice, device_id)
    if device is None:
        raise NotFoundError("hub.device_not_found", f"no device {device_id!r} in the hub")
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
    session.add(message)
    device.c2d_count += 1
    session.flush()
    notify_after_commit(session, C2DQueued(device_id))
    return message


def pending_c2d(session: Session, device_id: str) -> list[HubC2DMessage]:
    """The device's undelivered cloud-to-device messages, oldest first."""
    query = (
        select(HubC2DMessage)
        .where(HubC2DMessage.device_id == device_id, HubC2DMessage.status == "pending")
        .order_by(HubC2DMessage.id)
    )
    return list(session.scalars(query))


def mark_c2d_delivered(
    session: Session, device_id: str, message_id: str, *, now: dt.datetime
) -> None:
    """Record the device's PUBACK for a message; unknown or repeated ids are ignored."""
    message = session.scalar(
        select(HubC2DMessage).where(
            HubC2DMessage.device_id == device_id,
            HubC2DMessage.message_id == message_id,
            HubC2DMessage.status == "pending",
        )
    )
    if message is None:
        return
    message.status = "delivered"
    message.delivered_at = now
    device = session.get(HubDevice, device_id)
    if device is not None and device.c2d_count > 0:
        device.c2d_count -= 1
