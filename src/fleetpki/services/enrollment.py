"""Compound use cases behind the HTTP API: catalogues, registration with upserts, token auth."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import jwt
from cryptography import x509
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleetpki.errors import AuthenticationError, NotFoundError, ValidationError
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services.audit import list_audit
from fleetpki.services.authority import ca_chain, get_ca, list_cas, list_templates
from fleetpki.services.certificates import (
    authenticate_certificate,
    certificate_holder,
    certificate_pem,
    get_certificate_by_thumbprint,
    revoke,
)
from fleetpki.services.context import Actor
from fleetpki.services.domains import OWNER, list_domains, register_domain
from fleetpki.services.principals import ensure_principal
from fleetpki.store.models import (
    AuditEntry,
    CARecord,
    CertificateRecord,
    DomainMember,
    DomainRecord,
    Principal,
    TemplateRecord,
)

__all__ = [
    "IssuerOffer",
    "MemberRef",
    "authenticate_certificate_token",
    "can_see_certificate",
    "certificate_audit",
    "domain_for_request",
    "issuer_chain",
    "issuer_offers",
    "leaf_expiry_summary",
    "may_revoke",
    "principal_names",
    "register_domain_with_members",
    "resolve_issue_target",
    "revoke_by_thumbprint",
    "revoke_with_token",
    "visible_certificate",
    "visible_domain",
]


@dataclass(frozen=True, slots=True)
class IssuerOffer:
    """An issuing CA and one of its templates: what a caller may request from."""

    ca: CARecord
    template: TemplateRecord


def issuer_offers(session: Session) -> list[IssuerOffer]:
    """Every active issuing CA with each of its templates."""
    offers: list[IssuerOffer] = []
    for ca in list_cas(session):
        if ca.tier != "issuing" or ca.status != "active":
            continue
        offers.extend(IssuerOffer(ca, t) for t in list_templates(session, ca.id))
    return offers


@dataclass(frozen=True, slots=True)
class MemberRef:
    """A principal named in a request: an Entra-style object id and a display name."""

    principal_id: str
    friendly_name: str = ""


def register_domain_with_members(
    session: Session,
    actor: Actor,
    *,
    ca_id: str,
    template_id: str | None,
    name: str,
    owners: Sequence[MemberRef],
    requesters: Sequence[MemberRef],
    now: dt.datetime,
) -> DomainRecord:
    """Register a domain, creating principals first seen in its owner and requester lists.

    EZCA's RegisterNewDomain names principals by Entra object id; they need not be
    known yet.  When no owner is given the caller owns the domain and may request
    for it, as EZCA's client defaults to.  Everything happens in the caller's
    transaction, so a refused registration leaves no new principal behind.

    Raises:
        ValidationError: ``principal.bad_id`` and the codes of ``register_domain``.
        NotFoundError, ConflictError, PermissionDenied: see ``register_domain``.
    """
    if not owners:
        owners = [MemberRef(actor.principal_id)]
        requesters = requesters or [MemberRef(actor.principal_id)]
    owner_ids = [
        ensure_principal(session, m.principal_id, m.friendly_name, now=now).id for m in owners
    ]
    requester_ids = [
        ensure_principal(session, m.principal_id, m.friendly_name, now=now).id for m in requesters
    ]
    return register_domain(
        session,
        actor,
        ca_id=ca_id,
        template_id=template_id,
        name=name,
        owners=owner_ids,
        requesters=requester_ids,
        now=now,
    )


def domain_for_request(
    session: Session, actor: Actor, name: str, ca_id: str | None = None
) -> DomainRecord:
    """The one registered domain called ``name`` that the actor can see.

    Raises:
        NotFoundError: ``domain.not_found``.
        ValidationError: ``domain.ambiguous`` when it exists under several CAs and
        no ``ca_id`` chooses one.
    """
    found = [
        d for d in list_domains(session, actor, name=name) if ca_id is None or d.ca_id == ca_id
    ]
    if not found:
        raise NotFoundError("domain.not_found", f"no registered domain {name!r} that you can see")
    if len(found) > 1:
        raise ValidationError(
            "domain.ambiguous", f"{name!r} is registered under several CAs: name the CA"
        )
    return found[0]


def can_see_certificate(session: Session, actor: Actor, record: CertificateRecord) -> bool:
    """Admins, the requester, the holder and members of the certificate's domain."""
    if actor.is_admin or actor.principal_id in {
        record.requested_by,
        certificate_holder(record).principal_id,
    }:
        return True
    if record.domain_id is None:
        return False
    member = session.scalar(
        select(DomainMember.principal_id).where(
            DomainMember.domain_id == record.domain_id,
            DomainMember.principal_id == actor.principal_id,
        )
    )
    return member is not None


def visible_certificate(session: Session, actor: Actor, record: CertificateRecord) -> None:
    """Check that the actor may see ``record``.

    Raises:
        NotFoundError: ``certificate.not_found``, so that strangers cannot probe
        which serials exist.
    """
    if not can_see_certificate(session, actor, record):
        raise NotFoundError("certificate.not_found", f"no certificate {record.serial_hex}")


def issuer_chain(session: Session, record: CertificateRecord) -> list[x509.Certificate]:
    """The issuing CA's certificate followed by its parents up to the root."""
    return ca_chain(session, get_ca(session, record.ca_id))


def revoke_by_thumbprint(
    session: Session,
    actor: Actor,
    thumbprint: str,
    reason: RevocationReason,
    *,
    ca_id: str | None = None,
    now: dt.datetime,
) -> CertificateRecord:
    """Revoke the certificate with this SHA-1 (or SHA-256) thumbprint, EZCA-style.

    Raises:
        NotFoundError: ``certificate.not_found`` (also when it belongs to another CA
        or the caller cannot see it).
        PermissionDenied, ConflictError, ValidationError: see ``certificates.revoke``.
    """
    record = get_certificate_by_thumbprint(session, thumbprint)
    if ca_id is not None and record.ca_id != get_ca(session, ca_id).id:
        raise NotFoundError("certificate.not_found", f"no certificate {thumbprint} under that CA")
    visible_certificate(session, actor, record)
    return revoke(session, actor, record, reason, now=now)


def _thumbprint_from_token(token: str) -> str:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise AuthenticationError(
            "certtoken.invalid", "the certificate token is malformed"
        ) from exc
    x5t = header.get("x5t")
    if not isinstance(x5t, str) or not x5t:
        raise AuthenticationError("certtoken.invalid", "the certificate token carries no x5t")
    if len(x5t) == 40 and all(c in "0123456789abcdefABCDEF" for c in x5t):
        return x5t.upper()
    # RFC 7515 §4.1.7: base64url of the SHA-1 digest.
    try:
        raw = base64.urlsafe_b64decode(x5t + "=" * (-len(x5t) % 4))
    except (ValueError, binascii.Error):
        raise AuthenticationError("certtoken.invalid", "the token's x5t is malformed") from None
    if len(raw) != 20:
        raise AuthenticationError("certtoken.invalid", "the token's x5t is malformed")
    return raw.hex().upper()


def authenticate_certificate_token(
    session: Session,
    token: str,
    *,
    certificate_pem_text: bytes | str | None = None,
    audience: str,
    now: dt.datetime,
) -> CertificateRecord:
    """Check a certificate token, with the certificate from the body or found by ``x5t``.

    EZCA's RevokeCertificate sends no body: the certificate is then the stored one
    whose SHA-1 thumbprint the token's ``x5t`` names.

    Raises:
        AuthenticationError: ``certtoken.*``, ``certificate.unknown``,
        ``certificate.revoked``, ``certificate.expired``.
        ValidationError: ``certificate.malformed``.
    """
    if certificate_pem_text is None:
        try:
            stored = get_certificate_by_thumbprint(session, _thumbprint_from_token(token))
        except NotFoundError:
            raise AuthenticationError(
                "certificate.unknown", "the token names a certificate not issued here"
            ) from None
        certificate_pem_text = certificate_pem(stored)
    return authenticate_certificate(
        session, token, certificate_pem_text, audience=audience, now=now
    )


def revoke_with_token(
    session: Session,
    token: str,
    *,
    certificate_pem_text: bytes | str | None = None,
    reason: RevocationReason = RevocationReason.CESSATION_OF_OPERATION,
    audience: str,
    source: str,
    now: dt.datetime,
) -> CertificateRecord:
    """A device revokes its own certificate, proving possession with a certificate token.

    Raises:
        AuthenticationError: see :func:`authenticate_certificate_token`.
    """
    record = authenticate_certificate_token(
        session, token, certificate_pem_text=certificate_pem_text, audience=audience, now=now
    )
    holder = certificate_holder(record)
    actor = Actor(principal_id=holder.principal_id, source=source)
    return revoke(session, actor, record, reason, now=now)


def certificate_audit(
    session: Session,
    actor: Actor,
    *,
    thumbprint: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    offset: int = 0,
    limit: int = 100,
) -> list[tuple[AuditEntry, CertificateRecord | None]]:
    """Certificate audit entries the actor may see, newest first, with their certificate.

    With a thumbprint, the entries of that certificate (which the actor must be able
    to see); without, the entries of every certificate the actor can see.

    Raises:
        NotFoundError: ``certificate.not_found``.
    """
    limit = min(max(limit, 1), 1000)
    if thumbprint is not None:
        record = get_certificate_by_thumbprint(session, thumbprint)
        visible_certificate(session, actor, record)
        entries = list_audit(
            session, object_type="certificate", object_id=record.serial_hex, limit=offset + limit
        )
        pairs: list[tuple[AuditEntry, CertificateRecord | None]] = [(e, record) for e in entries]
    else:
        query = (
            select(AuditEntry, CertificateRecord)
            .join(CertificateRecord, CertificateRecord.serial_hex == AuditEntry.object_id)
            .where(AuditEntry.object_type == "certificate")
            .order_by(AuditEntry.id.desc())
        )
        pairs = [
            (entry, cert)
            for entry, cert in session.execute(query)
            if can_see_certificate(session, actor, cert)
        ]
    pairs = [
        (e, c)
        for e, c in pairs
        if (since is None or e.at >= since) and (until is None or e.at <= until)
    ]
    return pairs[max(offset, 0) : max(offset, 0) + limit]


def leaf_expiry_summary(session: Session, now: dt.datetime) -> dt.datetime | None:
    """The earliest ``not_after`` among valid, unexpired leaf certificates, if any."""
    return session.scalar(
        select(func.min(CertificateRecord.not_after)).where(
            CertificateRecord.status == "valid", CertificateRecord.not_after > now
        )
    )


def may_revoke(session: Session, actor: Actor, record: CertificateRecord) -> bool:
    """Whether ``certificates.revoke`` would let the actor revoke ``record``.

    The same rule as there: admins, the holder, and owners of the certificate's domain.
    """
    if actor.is_admin or actor.principal_id == certificate_holder(record).principal_id:
        return True
    if record.domain_id is None:
        return False
    owner = session.scalar(
        select(DomainMember.principal_id).where(
            DomainMember.domain_id == record.domain_id,
            DomainMember.principal_id == actor.principal_id,
            DomainMember.role == OWNER,
        )
    )
    return owner is not None


def principal_names(session: Session, principal_ids: Sequence[str]) -> dict[str, str]:
    """Friendly names of principals by id (ids without a principal are left out)."""
    if not principal_ids:
        return {}
    rows = session.execute(
        select(Principal.id, Principal.friendly_name).where(Principal.id.in_(set(principal_ids)))
    )
    return {row[0]: row[1] for row in rows}


def resolve_issue_target(
    session: Session,
    actor: Actor,
    *,
    domain: str | None,
    ca_id: str | None,
    template_id: str | None,
) -> tuple[str, str | None]:
    """The CA and template a request goes to: given, the domain's, or the only issuing CA.

    Raises:
        NotFoundError: ``domain.not_found``, ``ca.not_found``.
        ValidationError: ``domain.ambiguous``, ``request.ca_required`` when several
        issuing CAs exist and nothing chooses one.
    """
    if domain is not None:
        found = domain_for_request(session, actor, domain, ca_id)
        return found.ca_id, template_id or found.template_id
    if ca_id is not None:
        return ca_id, template_id
    issuing = [c for c in list_cas(session) if c.tier == "issuing" and c.status == "active"]
    if len(issuing) != 1:
        raise ValidationError(
            "request.ca_required", "several (or no) issuing CAs exist: name the CA or the domain"
        )
    return issuing[0].id, template_id


def visible_domain(session: Session, actor: Actor, domain_id: str) -> DomainRecord:
    """A domain the actor owns or requests for (any domain for admins).

    Raises:
        NotFoundError: ``domain.not_found``, also for domains the actor cannot see.
    """
    domain = session.get(DomainRecord, domain_id)
    if domain is None or not (
        actor.is_admin or actor.principal_id in {m.principal_id for m in domain.members}
    ):
        raise NotFoundError("domain.not_found", f"no domain {domain_id}")
    return domain
