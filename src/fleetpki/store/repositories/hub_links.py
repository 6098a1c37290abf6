"""Hub links on SQL: the hubs this CA drives, with the CAs each one trusts."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetpki.store.hub_models import HubLink

__all__ = ["SqlHubLinkRepository"]


class SqlHubLinkRepository:
    """:class:`fleetpki.services.ports.hub.HubLinkRepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, name: str) -> HubLink | None:
        """See :meth:`HubLinkRepository.get`."""
        return self._session.get(HubLink, name)

    def list(self) -> Sequence[HubLink]:
        """See :meth:`HubLinkRepository.list`."""
        return list(self._session.scalars(select(HubLink).order_by(HubLink.name)))

    def add(self, link: HubLink) -> None:
        """See :meth:`HubLinkRepository.add`."""
        self._session.add(link)
        self._session.flush()

    def delete(self, link: HubLink) -> None:
        """See :meth:`HubLinkRepository.delete` (its CA records go with it)."""
        self._session.delete(link)
        self._session.flush()
