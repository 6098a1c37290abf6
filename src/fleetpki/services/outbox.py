"""Outbox event types, and the transitional writer for services still handed a session."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from fleetpki.services.events import unit_of

__all__ = ["CERTIFICATE_REVOKED", "enqueue_event"]

#: A certificate was revoked: hubs must close its sessions and disable the device.
CERTIFICATE_REVOKED = "certificate.revoked"


def enqueue_event(
    session: Session, event_type: str, subject_id: str, payload: dict[str, Any], *, at: dt.datetime
) -> int:
    """Append an outbox event to the session's unit of work; it commits with the change."""
    return unit_of(session).events.append(event_type, subject_id, payload, at=at)
