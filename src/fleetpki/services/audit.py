"""The audit log: every change records who did what to which object, when and from where."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetpki.services.context import Actor
from fleetpki.store.models import AuditEntry

__all__ = ["list_audit", "record_audit"]


def record_audit(
    session: Session,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: str,
    *,
    at: dt.datetime,
    details: dict[str, Any] | None = None,
) -> None:
    """Add an audit entry to the current transaction (never secrets in ``details``)."""
    session.add(
        AuditEntry(
            at=at,
            actor_id=actor.principal_id,
            action=action,
            object_type=object_type,
            object_id=object_id,
            source=actor.source[:128],
            details=details or {},
        )
    )


def list_audit(
    session: Session,
    *,
    object_type: str | None = None,
    object_id: str | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """The newest audit entries, optionally for one object."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if object_type is not None:
        query = query.where(AuditEntry.object_type == object_type)
    if object_id is not None:
        query = query.where(AuditEntry.object_id == object_id)
    return list(session.scalars(query))
