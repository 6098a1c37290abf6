"""The EZCA-shaped use cases: registration with members, my domains and certificates, audit.

EZCA's routes combine steps that the other services keep apart (register a domain and
the principals it names; list certificates with their CA's name and whether the
caller may revoke them; a device revoking its own certificate by token). Each is one
use case here, in one unit of work.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from fleetpki.pki.revocation import RevocationReason
from fleetpki.services.authority import ca_record, current_issuer, template_record_of
from fleetpki.services.ca_views import (
    CertificateAuditView,
    CertificateEntryView,
    CertificateView,
    DomainInformationView,
    DomainView,
    audit_entry_view,
    certificate_view,
    domain_view,
)
from fleetpki.services.certificate_access import (
    can_see,
    certificate_by_thumbprint,
    certificate_holder,
    may_revoke,
    visible_certificate,
)
from fleetpki.services.certificates import CertificateQuery, revoke_in, search_in
from fleetpki.services.context import Actor, Clock
from fleetpki.services.domains import (
    register_domain_in,
    visible_domain_record,
    visible_domains,
)
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.services.principals import ensure_principal_in
from fleetpki.services.renewal import authenticate_certificate_token_in
from fleetpki.store.models import AuditEntry, CertificateRecord, DomainRecord

__all__ = ["EnrollmentService", "MemberRef", "register_domain_with_members_in"]


@dataclass(frozen=True, slots=True)
class MemberRef:
    """A principal named in a request: an Entra-style object id and a display name."""

    principal_id: str
    friendly_name: str = ""


def register_domain_with_members_in(
    tx: UnitOfWork,
    actor: Actor,
    *,
    ca_id: str | None,
    template_id: str | None,
    name: str,
    owners: Sequence[MemberRef],
    requesters: Sequence[MemberRef],
    now: dt.datetime,
) -> DomainRecord:
    """Register a domain, creating principals first seen in its member lists (caller's unit).

    EZCA's RegisterNewDomain names principals by Entra object id; they need not be
    known yet. When no owner is given the caller owns the domain and may request
    for it, as EZCA's client defaults to. Without ``ca_id`` the current issuer takes
    the domain. A refused registration leaves no new principal behind (one unit).

    Raises:
        ValidationError: ``principal.bad_id`` and the codes of ``register_domain_in``.
        NotFoundError: ``ca.no_current_issuer``; see ``register_domain_in``.
        ConflictError, PermissionDenied: see ``register_domain_in``.
    """
    if ca_id is None:
        ca_id = current_issuer(tx, now).id
    if not owners:
        owners = [MemberRef(actor.principal_id)]
        requesters = requesters or [MemberRef(actor.principal_id)]
    owner_ids = [
        ensure_principal_in(tx, m.principal_id, m.friendly_name, now=now).id for m in owners
    ]
    requester_ids = [
        ensure_principal_in(tx, m.principal_id, m.friendly_name, now=now).id for m in requesters
    ]
    return register_domain_in(
        tx,
        actor,
        ca_id=ca_id,
        template_id=template_id,
        name=name,
        owners=owner_ids,
        requesters=requester_ids,
        now=now,
    )


def _in_window(entry: AuditEntry, since: dt.datetime | None, until: dt.datetime | None) -> bool:
    return (since is None or entry.at >= since) and (until is None or entry.at <= until)


class EnrollmentService:
    """The EZCA-shaped use cases.

    Args:
        store: the database.
        clock: the source of "now".
        audience: the ``aud`` certificate tokens must carry (this CA's public URL).
    """

    def __init__(self, store: Store, clock: Clock, *, audience: str) -> None:
        self._store = store
        self._clock = clock
        self._audience = audience

    def register_domain(
        self,
        actor: Actor,
        *,
        ca_id: str | None,
        template_id: str | None,
        name: str,
        owners: Sequence[MemberRef],
        requesters: Sequence[MemberRef],
    ) -> DomainView:
        """Register a domain with members, creating new principals (see the ``_in`` function)."""
        with self._store.transaction() as tx:
            domain = register_domain_with_members_in(
                tx,
                actor,
                ca_id=ca_id,
                template_id=template_id,
                name=name,
                owners=owners,
                requesters=requesters,
                now=self._clock(),
            )
            return domain_view(domain)

    def my_domains(self, actor: Actor) -> list[DomainInformationView]:
        """The domains the actor owns or requests for, with CA and member names."""
        with self._store.transaction() as tx:
            found = visible_domains(tx, actor)
            names = tx.principals.names({m.principal_id for d in found for m in d.members})
            return [
                DomainInformationView(domain_view(d), ca_record(tx, d.ca_id).name, dict(names))
                for d in found
            ]

    def domain_information(self, actor: Actor, domain_id: str) -> DomainInformationView:
        """One domain the actor can see, with its CA's name and its members' names.

        Raises:
            NotFoundError: ``domain.not_found``, also for domains the actor cannot see.
        """
        with self._store.transaction() as tx:
            domain = visible_domain_record(tx, actor, domain_id)
            names = tx.principals.names({m.principal_id for m in domain.members})
            return DomainInformationView(
                domain_view(domain), ca_record(tx, domain.ca_id).name, dict(names)
            )

    def my_certificates(
        self, actor: Actor, *, offset: int, limit: int
    ) -> list[CertificateEntryView]:
        """A page of the certificates the actor can see, newest first, as EZCA lists them."""
        query = CertificateQuery(offset=offset, limit=limit)
        with self._store.transaction() as tx:
            return [
                CertificateEntryView(
                    certificate_view(r),
                    ca_name=ca_record(tx, r.ca_id).name,
                    auto_renew_percentage=template_record_of(
                        tx, r.template_id
                    ).auto_renew_percentage,
                    can_revoke=r.status != "revoked" and may_revoke(tx, actor, r),
                )
                for r in search_in(tx, actor, query, now=self._clock())
            ]

    def certificate_audit(
        self,
        actor: Actor,
        *,
        thumbprint: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> list[CertificateAuditView]:
        """Certificate audit entries the actor may see, newest first, with their certificate.

        With a thumbprint, the entries of that certificate (which the actor must be able
        to see); without, the entries of every certificate the actor can see.

        Raises:
            NotFoundError: ``certificate.not_found``.
        """
        limit = min(max(limit, 1), 1000)
        offset = max(offset, 0)
        with self._store.transaction() as tx:
            pairs: list[tuple[AuditEntry, CertificateRecord]]
            if thumbprint is not None:
                record = certificate_by_thumbprint(tx, thumbprint)
                visible_certificate(tx, actor, record)
                entries = tx.audit.latest(
                    object_type="certificate", object_id=record.serial_hex, limit=offset + limit
                )
                pairs = [(e, record) for e in entries]
            else:
                pairs = [
                    (entry, cert)
                    for entry, cert in tx.audit.certificate_entries()
                    if can_see(tx, actor, cert)
                ]
            pairs = [(e, c) for e, c in pairs if _in_window(e, since, until)]
            return [
                CertificateAuditView(
                    audit_entry_view(e), certificate_view(c), ca_record(tx, c.ca_id).name
                )
                for e, c in pairs[offset : offset + limit]
            ]

    def revoke_with_token(
        self,
        token: str,
        *,
        certificate_pem: bytes | str | None = None,
        reason: RevocationReason = RevocationReason.CESSATION_OF_OPERATION,
        source: str,
    ) -> CertificateView:
        """A device revokes its own certificate, proving possession with a certificate token.

        Raises:
            AuthenticationError: see
            :func:`fleetpki.services.renewal.authenticate_certificate_token_in`.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            record = authenticate_certificate_token_in(
                tx, token, certificate_pem_text=certificate_pem, audience=self._audience, now=now
            )
            holder = certificate_holder(record)
            actor = Actor(principal_id=holder.principal_id, source=source)
            return certificate_view(revoke_in(tx, actor, record, reason, now=now))
