"""The audit log: every change records who did what to which object, when and from where."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fleetpki.errors import PermissionDenied, ValidationError
from fleetpki.services.ca_views import AuditEntryView, audit_entry_view
from fleetpki.services.context import Actor
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.services.ports.ca import AuditQuery
from fleetpki.store.models import AuditEntry

__all__ = ["AuditQuery", "AuditService", "write_audit"]


def write_audit(
    tx: UnitOfWork,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: str,
    *,
    at: dt.datetime,
    details: dict[str, Any] | None = None,
) -> None:
    """Add an audit entry to the caller's unit of work (never secrets in ``details``)."""
    tx.audit.add(
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


class AuditService:
    """Reading the audit log.

    Args:
        store: the database.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def latest(
        self,
        actor: Actor,
        *,
        object_type: str | None = None,
        object_id: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntryView]:
        """The newest audit entries (admins only), optionally of one object.

        Raises:
            PermissionDenied: ``auth.admin_required``.
        """
        if not actor.is_admin:
            raise PermissionDenied("auth.admin_required", "only admins may read the audit log")
        with self._store.transaction() as tx:
            entries = tx.audit.latest(object_type=object_type, object_id=object_id, limit=limit)
            return [audit_entry_view(e) for e in entries]

    def search(self, actor: Actor, query: AuditQuery) -> list[AuditEntryView]:
        """Audit entries matching ``query``, newest first (admins only).

        Raises:
            PermissionDenied: ``auth.admin_required``.
            ValidationError: ``audit.bad_window`` when ``since`` is after ``until``.
        """
        if not actor.is_admin:
            raise PermissionDenied("auth.admin_required", "only admins may read the audit log")
        if query.since is not None and query.until is not None and query.since > query.until:
            raise ValidationError("audit.bad_window", "the start of the window is after its end")
        with self._store.transaction() as tx:
            return [audit_entry_view(e) for e in tx.audit.search(query)]
