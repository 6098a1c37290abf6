"""Hub nodes and relayed direct methods on SQL (see :mod:`fleetpki.services.ports.hub_nodes`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from fleetpki.store.hub_models import HubMethodCall, HubNode

__all__ = ["METHODS_CHANNEL", "SqlHubMethodCallRepository", "SqlHubNodeRepository"]

#: The PostgreSQL channel that carries "this relayed method call changed" (its id).
METHODS_CHANNEL = "fleetpki_methods"


class SqlHubNodeRepository:
    """:class:`fleetpki.services.ports.hub_nodes.HubNodeRepository` on one session."""

    def __init__(self, session: Session, dialect: str) -> None:
        self._session = session
        self._dialect = dialect

    def get(self, name: str) -> HubNode | None:
        """See :meth:`HubNodeRepository.get` (``SELECT ... FOR UPDATE`` on PostgreSQL)."""
        query = select(HubNode).where(HubNode.name == name)
        if self._dialect == "postgresql":
            query = query.with_for_update()
        return self._session.scalar(query)

    def add(self, node: HubNode) -> None:
        """See :meth:`HubNodeRepository.add`."""
        self._session.add(node)
        self._session.flush()

    def delete(self, node: HubNode) -> None:
        """See :meth:`HubNodeRepository.delete`."""
        self._session.delete(node)
        self._session.flush()

    def beating_since(self, since: dt.datetime) -> Sequence[HubNode]:
        """See :meth:`HubNodeRepository.beating_since`."""
        query = select(HubNode).where(HubNode.heartbeat_at >= since).order_by(HubNode.name)
        return list(self._session.scalars(query))

    def silent_before(self, before: dt.datetime) -> Sequence[HubNode]:
        """See :meth:`HubNodeRepository.silent_before`."""
        query = select(HubNode).where(HubNode.heartbeat_at < before).order_by(HubNode.name)
        return list(self._session.scalars(query))


class SqlHubMethodCallRepository:
    """:class:`fleetpki.services.ports.hub_nodes.HubMethodCallRepository` on one session."""

    def __init__(self, session: Session, dialect: str) -> None:
        self._session = session
        self._dialect = dialect

    def add(self, call: HubMethodCall) -> None:
        """See :meth:`HubMethodCallRepository.add`."""
        self._session.add(call)
        self._session.flush()

    def get(self, call_id: str, *, for_update: bool = False) -> HubMethodCall | None:
        """See :meth:`HubMethodCallRepository.get`."""
        query = select(HubMethodCall).where(HubMethodCall.id == call_id)
        if for_update and self._dialect == "postgresql":
            # Nodes answer and decline concurrently: each reads the row it changes
            # under a lock (SQLite's units of work take its write lock anyway).
            query = query.with_for_update()
        return self._session.scalar(query)

    def delete(self, call: HubMethodCall) -> None:
        """See :meth:`HubMethodCallRepository.delete`."""
        self._session.delete(call)
        self._session.flush()

    def delete_expired(self, before: dt.datetime) -> int:
        """See :meth:`HubMethodCallRepository.delete_expired`."""
        done = self._session.execute(delete(HubMethodCall).where(HubMethodCall.deadline < before))
        return int(getattr(done, "rowcount", 0) or 0)

    def changed(self, call_id: str) -> None:
        """See :meth:`HubMethodCallRepository.changed`: a NOTIFY sent at commit (PostgreSQL)."""
        if self._dialect == "postgresql":
            self._session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": METHODS_CHANNEL, "payload": call_id},
            )
