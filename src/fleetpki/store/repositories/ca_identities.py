"""The CA side's repositories on SQL: principals, API tokens, domains and the audit log."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence

from sqlalchemy import bindparam, delete, or_, select
from sqlalchemy.orm import Session

from fleetpki.services.ports.ca import AuditQuery
from fleetpki.store.models import (
    ApiToken,
    AuditEntry,
    CertificateRecord,
    DomainMember,
    DomainRecord,
    PortalSession,
    Principal,
)
from fleetpki.store.rows import insert_row

__all__ = [
    "SqlAuditRepository",
    "SqlDomainRepository",
    "SqlPortalSessionRepository",
    "SqlPrincipalRepository",
    "SqlTokenRepository",
]


_DOMAIN_ID = (
    select(DomainRecord.id)
    .where(DomainRecord.ca_id == bindparam("ca_id"), DomainRecord.name == bindparam("name"))
    .limit(1)
)
_DOMAIN_REQUESTER = (
    select(DomainRecord.id, DomainMember.principal_id)
    .outerjoin(
        DomainMember,
        (DomainMember.domain_id == DomainRecord.id)
        & (DomainMember.principal_id == bindparam("requester"))
        & (DomainMember.role == "requester"),
    )
    .where(DomainRecord.ca_id == bindparam("ca_id"), DomainRecord.name == bindparam("name"))
    .limit(1)
)


class SqlPrincipalRepository:
    """:class:`fleetpki.services.ports.ca.PrincipalRepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, principal_id: str) -> Principal | None:
        """See :meth:`PrincipalRepository.get`."""
        return self._session.get(Principal, principal_id)

    def all(self) -> list[Principal]:
        """See :meth:`PrincipalRepository.all`."""
        return list(self._session.scalars(select(Principal).order_by(Principal.friendly_name)))

    def names(self, principal_ids: Collection[str]) -> Mapping[str, str]:
        """See :meth:`PrincipalRepository.names`."""
        if not principal_ids:
            return {}
        rows = self._session.execute(
            select(Principal.id, Principal.friendly_name).where(
                Principal.id.in_(set(principal_ids))
            )
        )
        return {row[0]: row[1] for row in rows}

    def add(self, principal: Principal) -> None:
        """See :meth:`PrincipalRepository.add`."""
        self._session.add(principal)
        self._session.flush()


class SqlTokenRepository:
    """:class:`fleetpki.services.ports.ca.TokenRepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._held: list[Principal] = []

    def find_by_hash(self, token_hash: str) -> ApiToken | None:
        """See :meth:`TokenRepository.find_by_hash`.

        The token's principal comes in the same statement and stays in the session (held
        here: its identity map holds objects weakly), so that authenticating a request,
        which reads both, takes one statement.
        """
        row = self._session.execute(
            select(ApiToken, Principal)
            .outerjoin(Principal, Principal.id == ApiToken.principal_id)
            .where(ApiToken.token_hash == token_hash)
        ).first()
        if row is None:
            return None
        token, principal = row
        if principal is not None:
            self._held.append(principal)
        return token

    def add(self, token: ApiToken) -> None:
        """See :meth:`TokenRepository.add`."""
        self._session.add(token)


class SqlDomainRepository:
    """:class:`fleetpki.services.ports.ca.DomainRepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, domain_id: str) -> DomainRecord | None:
        """See :meth:`DomainRepository.get`."""
        return self._session.get(DomainRecord, domain_id)

    def find(self, ca_id: str, name: str) -> DomainRecord | None:
        """See :meth:`DomainRepository.find`."""
        return self._session.scalar(
            select(DomainRecord).where(DomainRecord.ca_id == ca_id, DomainRecord.name == name)
        )

    def id_for(self, ca_id: str, name: str) -> str | None:
        """See :meth:`DomainRepository.id_for`."""
        return self._session.scalar(
            select(DomainRecord.id).where(DomainRecord.ca_id == ca_id, DomainRecord.name == name)
        )

    def search(self, *, name: str | None = None, member: str | None = None) -> list[DomainRecord]:
        """See :meth:`DomainRepository.search`."""
        query = select(DomainRecord).order_by(DomainRecord.name)
        if name is not None:
            query = query.where(DomainRecord.name == name)
        if member is not None:
            query = query.where(
                DomainRecord.id.in_(
                    select(DomainMember.domain_id).where(DomainMember.principal_id == member)
                )
            )
        return list(self._session.scalars(query))

    def request_access(
        self, ca_id: str, name: str, requester: str | None
    ) -> tuple[str | None, bool]:
        """See :meth:`DomainRepository.request_access`."""
        # Through the connection, not the ORM: one row of two columns, no objects; the
        # statements are built once, with their parameters bound at each execution.
        connection = self._session.connection()
        if requester is None:
            found = connection.execute(_DOMAIN_ID, {"ca_id": ca_id, "name": name}).scalar()
            return found, found is not None
        row = connection.execute(
            _DOMAIN_REQUESTER, {"ca_id": ca_id, "name": name, "requester": requester}
        ).first()
        if row is None:
            return None, False
        return row[0], row[1] is not None

    def has_member(self, domain_id: str, principal_id: str, role: str | None = None) -> bool:
        """See :meth:`DomainRepository.has_member`."""
        query = select(DomainMember.principal_id).where(
            DomainMember.domain_id == domain_id, DomainMember.principal_id == principal_id
        )
        if role is not None:
            query = query.where(DomainMember.role == role)
        return self._session.scalar(query.limit(1)) is not None

    def add(self, domain: DomainRecord) -> None:
        """See :meth:`DomainRepository.add`."""
        self._session.add(domain)
        self._session.flush()


class SqlAuditRepository:
    """:class:`fleetpki.services.ports.ca.AuditRepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, entry: AuditEntry) -> None:
        """See :meth:`AuditRepository.add`."""
        insert_row(self._session, entry)

    def latest(
        self,
        *,
        object_type: str | None = None,
        object_id: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """See :meth:`AuditRepository.latest`."""
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if object_type is not None:
            query = query.where(AuditEntry.object_type == object_type)
        if object_id is not None:
            query = query.where(AuditEntry.object_id == object_id)
        return list(self._session.scalars(query))

    def certificate_entries(self) -> Sequence[tuple[AuditEntry, CertificateRecord]]:
        """See :meth:`AuditRepository.certificate_entries`."""
        query = (
            select(AuditEntry, CertificateRecord)
            .join(CertificateRecord, CertificateRecord.serial_hex == AuditEntry.object_id)
            .where(AuditEntry.object_type == "certificate")
            .order_by(AuditEntry.id.desc())
        )
        return [(row[0], row[1]) for row in self._session.execute(query)]

    def search(self, query: AuditQuery) -> list[AuditEntry]:
        """See :meth:`AuditRepository.search`."""
        stmt = select(AuditEntry).order_by(AuditEntry.id.desc())
        if query.action:
            stmt = stmt.where(
                or_(
                    AuditEntry.action == query.action,
                    AuditEntry.action.startswith(query.action + ".", autoescape=True),
                )
            )
        if query.actor_id is not None:
            stmt = stmt.where(AuditEntry.actor_id == query.actor_id)
        if query.object_type is not None:
            stmt = stmt.where(AuditEntry.object_type == query.object_type)
        if query.object_id is not None:
            stmt = stmt.where(AuditEntry.object_id == query.object_id)
        if query.since is not None:
            stmt = stmt.where(AuditEntry.at >= query.since)
        if query.until is not None:
            stmt = stmt.where(AuditEntry.at <= query.until)
        stmt = stmt.offset(max(query.offset, 0)).limit(min(max(query.limit, 1), 1000))
        return list(self._session.scalars(stmt))


class SqlPortalSessionRepository:
    """:class:`fleetpki.services.ports.ca.PortalSessionRepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, id_hash: str) -> PortalSession | None:
        """See :meth:`PortalSessionRepository.get`."""
        return self._session.get(PortalSession, id_hash)

    def add(self, session: PortalSession) -> None:
        """See :meth:`PortalSessionRepository.add`."""
        self._session.add(session)

    def delete(self, session: PortalSession) -> None:
        """See :meth:`PortalSessionRepository.delete`."""
        self._session.delete(session)

    def delete_expired(self, now: dt.datetime) -> int:
        """See :meth:`PortalSessionRepository.delete_expired`."""
        result = self._session.execute(delete(PortalSession).where(PortalSession.expires_at <= now))
        return int(getattr(result, "rowcount", 0) or 0)
