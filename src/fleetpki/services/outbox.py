"""The outbox: events for hubs, written in the same transaction as the change."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetpki.store.models import OutboxEvent

__all__ = ["CERTIFICATE_REVOKED", "enqueue_event", "pending_events"]

#: A certificate was revoked: hubs must close its sessions and disable the device.
CERTIFICATE_REVOKED = "certificate.revoked"


def enqueue_event(
    session: Session, event_type: str, subject_id: str, payload: dict[str, Any], *, at: dt.datetime
) -> OutboxEvent:
    """Add an outbox event to the current transaction; it commits with the change."""
    event = OutboxEvent(
        created_at=at,
        event_type=event_type,
        subject_id=subject_id,
        payload=payload,
        status="pending",
        attempts=0,
        next_attempt_at=at,
    )
    session.add(event)
    return event


def pending_events(session: Session, *, now: dt.datetime, limit: int = 100) -> list[OutboxEvent]:
    """Events due for delivery, oldest first."""
    query = (
        select(OutboxEvent)
        .where(OutboxEvent.status == "pending", OutboxEvent.next_attempt_at <= now)
        .order_by(OutboxEvent.id)
        .limit(limit)
    )
    return list(session.scalars(query))
