"""The CA side's repositories on SQL: principals, API tokens, domains and the audit log."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence

from sqlalchemy import bindparam, delete, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from fleetpki.services.ports.ca import AuditQuery, TokenHolder
from fleetpki.store.models import (
    ApiToken,
    AuditEntry,
    CertificateRecord,
    DomainMember,
    DomainRecord,
    PortalSession,
    Principal,
)
from fleetpki.store.prepared import prepared
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


_TOKEN_HOLDER = (
    select(
        ApiToken.id,
        ApiToken.token_hash,
        ApiToken.principal_id,
        ApiToken.expires_at,
        ApiToken.revoked_at,
        ApiToken.last_used_at,
        Principal.id,
        Principal.is_admin,
        Principal.friendly_name,
        Principal.principal_type,
        Principal.created_at,
    )
    .outerjoin(Principal, Principal.id == ApiToken.principal_id)
    .where(ApiToken.token_hash == bindparam("token_hash"))
)
_TOKEN_USED = (
    update(ApiToken)
    .where(ApiToken.id == bindparam("token_id"))
    .values(last_used_at=bindparam("at", type_=ApiToken.__table__.c.last_used_at.type))
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

    def holder(self, token_hash: str) -> TokenHolder | None:
        """See :meth:`TokenRepository.holder`."""
        row = prepared(_TOKEN_HOLDER, self._session).first(
            self._session, {"token_hash": token_hash}
        )
        if row is None:
            return None
        (token_id, token_hash_, principal_id, expires, revoked, last_used) = row[:6]
        found, admin, name, kind, created = row[6:]
        return TokenHolder(
            token_id=token_id,
            token_hash=token_hash_,
            principal_id=principal_id,
            expires_at=expires,
            revoked_at=revoked,
            last_used_at=last_used,
            principal_exists=found is not None,
            is_admin=bool(admin),
            friendly_name=name or "",
            principal_type=kind or "",
            principal_created_at=created,
        )

    def mark_used(self, token_id: str, at: dt.datetime) -> None:
        """See :meth:`TokenRepository.mark_used`."""
        held = self._session.identity_map.get(identity_key(ApiToken, token_id))
        if held is not None:
            held.last_used_at = at  # the session's copy too
        prepared(_TOKEN_USED, self._session).execute(
            self._session, {"token_id": token_id, "at": at}
        )

    def get(self, token_id: str) -> ApiToken | None:
        """See :meth:`TokenRepository.get`."""
        return self._session.get(ApiToken, token_id)

    def of_principal(self, principal_id: str | None) -> list[ApiToken]:
        """See :meth:`TokenRepository.of_principal`."""
        query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
        if principal_id is not None:
            query = query.where(ApiToken.principal_id == principal_id)
        return list(self._session.scalars(query))

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
        # On the driver's connection (store.prepared): one row of two columns, no
        # objects; the statements are compiled once, their parameters bound each time.
        if requester is None:
            row = prepared(_DOMAIN_ID, self._session).first(
                self._session, {"ca_id": ca_id, "name": name}
            )
            found = None if row is None else row[0]
            return found, found is not None
        row = prepared(_DOMAIN_REQUESTER, self._session).first(
            self._session, {"ca_id": ca_id, "name": name, "requester": requester}
        )
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

    def delete_started_with_token(self, principal_id: str) -> int:
        """See :meth:`PortalSessionRepository.delete_started_with_token`."""
        result = self._session.execute(
            delete(PortalSession).where(
                PortalSession.principal_id == principal_id, PortalSession.method == "token"
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)

    def delete_expired(self, now: dt.datetime) -> int:
        """See :meth:`PortalSessionRepository.delete_expired`."""
        result = self._session.execute(delete(PortalSession).where(PortalSession.expires_at <= now))
        return int(getattr(result, "rowcount", 0) or 0)
