"""Certificates: issue, list and search, renew with the current certificate, revoke."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fleetpki.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDenied,
    ValidationError,
)
from fleetpki.keystore import KeyStore
from fleetpki.pki.certtoken import verify_certificate_token
from fleetpki.pki.csr import parse_csr
from fleetpki.pki.issuance import IssuanceRequest, IssuedCertificate, issue_certificate
from fleetpki.pki.names import SubjectAltName
from fleetpki.pki.profile import KeyUsageName
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services.audit import record_audit
from fleetpki.services.authority import (
    CAUrlsConfig,
    get_ca,
    get_template,
    issuer_for,
    template_from_record,
)
from fleetpki.services.context import Actor
from fleetpki.services.domains import OWNER, domain_id_for, may_request
from fleetpki.services.events import notify_after_commit
from fleetpki.services.notifications import CertificateRevoked
from fleetpki.services.outbox import CERTIFICATE_REVOKED, enqueue_event
from fleetpki.store.models import CertificateRecord, DomainMember, Principal, UsedTokenId

__all__ = [
    "CertificateQuery",
    "IssueCommand",
    "authenticate_certificate",
    "authenticate_client_certificate",
    "certificate_holder",
    "certificate_pem",
    "get_certificate",
    "get_certificate_by_thumbprint",
    "issue",
    "list_certificates",
    "load_certificate_pem",
    "principal_for_client_certificate",
    "renew_with_certificate",
    "renew_with_client_certificate",
    "renew_with_token",
    "revoke",
]


@dataclass(frozen=True, slots=True)
class IssueCommand:
    """A certificate request as the services take it (from CLI, EZCA routes, /v1, EST)."""

    ca_id: str
    csr: bytes | str
    template_id: str | None = None
    validity_days: int | None = None
    subject_cn: str | None = None
    subject_alt_names: tuple[SubjectAltName, ...] | None = None
    ekus: tuple[str, ...] | None = None
    key_usages: tuple[KeyUsageName, ...] | None = None


def _store(
    session: Session,
    issued: IssuedCertificate,
    *,
    ca_id: str,
    template_id: str,
    requested_by: str,
    key_spec: str,
    renews_id: int | None,
    now: dt.datetime,
) -> CertificateRecord:
    domain_name = issued.common_name or (
        issued.subject_alt_names[0].value if issued.subject_alt_names else None
    )
    domain_id = domain_id_for(session, ca_id, domain_name) if domain_name else None
    record = CertificateRecord(
        ca_id=ca_id,
        template_id=template_id,
        domain_id=domain_id,
        serial_hex=issued.serial_hex,
        subject_cn=issued.common_name,
        sans=[f"{san.type.name}:{san.value}" for san in issued.subject_alt_names],
        key_spec=key_spec,
        not_before=issued.not_before,
        not_after=issued.not_after,
        sha1_hex=issued.sha1_hex,
        sha256_hex=issued.sha256_hex,
        der=issued.der,
        status="valid",
        requested_by=requested_by,
        renews_id=renews_id,
        created_at=now,
    )
    session.add(record)
    session.flush()
    return record


def issue(
    session: Session,
    actor: Actor,
    keystore: KeyStore,
    urls: CAUrlsConfig,
    command: IssueCommand,
    *,
    now: dt.datetime,
) -> tuple[CertificateRecord, IssuedCertificate]:
    """Issue a certificate for a CSR under a template of an issuing CA.

    Raises:
        NotFoundError: ``ca.not_found``, ``template.not_found``.
        ValidationError, PermissionDenied: the pipeline's codes (``csr.*``,
        ``template.*``, ``domain.not_requester``); nothing is signed or stored then.
    """
    ca = get_ca(session, command.ca_id)
    if command.template_id is not None:
        template_rec = get_template(session, command.template_id, ca.id)
    elif ca.templates:
        template_rec = ca.templates[0]
    else:
        raise NotFoundError("template.not_found", f"CA {ca.name!r} has no template")
    issuer = issuer_for(ca, keystore, urls)
    parsed = parse_csr(command.csr)
    request = IssuanceRequest(
        csr=parsed,
        validity_days=command.validity_days,
        subject_cn=command.subject_cn,
        subject_alt_names=command.subject_alt_names,
        ekus=command.ekus,
        key_usages=command.key_usages,
    )
    issued = issue_certificate(
        request,
        template_from_record(template_rec),
        issuer,
        may_request=lambda name: may_request(session, actor, ca.id, name),
        now=now,
    )
    record = _store(
        session,
        issued,
        ca_id=ca.id,
        template_id=template_rec.id,
        requested_by=actor.principal_id,
        key_spec=parsed.key_spec.value if parsed.key_spec else "unknown",
        renews_id=None,
        now=now,
    )
    record_audit(
        session,
        actor,
        "certificate.issue",
        "certificate",
        record.serial_hex,
        at=now,
        details={
            "ca_id": ca.id,
            "cn": issued.common_name,
            "sans": record.sans,
            "not_after": issued.not_after.isoformat(),
            "sha1": issued.sha1_hex,
        },
    )
    return record, issued


def load_certificate_pem(data: bytes | str) -> x509.Certificate:
    """Parse one PEM (or DER) certificate, the first of a chain.

    Raises:
        ValidationError: ``certificate.malformed``.
    """
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificates(raw)[0]
        return x509.load_der_x509_certificate(raw)
    except (ValueError, IndexError) as exc:
        raise ValidationError("certificate.malformed", "not a PEM or DER certificate") from exc


def get_certificate(session: Session, serial: str) -> CertificateRecord:
    """Look up a certificate by serial (hex, any case, optional colons or 0x).

    Raises:
        NotFoundError: ``certificate.not_found``.
    """
    cleaned = serial.strip().replace(":", "").upper().removeprefix("0X").lstrip("0") or "0"
    record = session.scalar(
        select(CertificateRecord).where(CertificateRecord.serial_hex == cleaned)
    )
    if record is None:
        raise NotFoundError("certificate.not_found", f"no certificate with serial {serial}")
    return record


def get_certificate_by_thumbprint(session: Session, thumbprint: str) -> CertificateRecord:
    """Look up a certificate by SHA-1 (40 hex) or SHA-256 (64 hex) thumbprint, any case.

    Raises:
        NotFoundError: ``certificate.not_found``.
    """
    value = thumbprint.strip().replace(":", "").upper()
    column = CertificateRecord.sha256_hex if len(value) == 64 else CertificateRecord.sha1_hex
    record = session.scalar(select(CertificateRecord).where(column == value))
    if record is None:
        raise NotFoundError("certificate.not_found", f"no certificate with thumbprint {thumbprint}")
    return record


@dataclass(frozen=True, slots=True)
class CertificateQuery:
    """Filters for listing certificates."""

    domain: str | None = None
    status: str | None = None
    expiring_within: dt.timedelta | None = None
    ca_id: str | None = None
    offset: int = 0
    limit: int = 100


_STATUSES = frozenset({"valid", "revoked", "expired"})


def list_certificates(
    session: Session, actor: Actor, query: CertificateQuery, *, now: dt.datetime
) -> list[CertificateRecord]:
    """Certificates the actor requested or whose domain it belongs to (all for admins).

    ``status`` is ``valid`` (unrevoked and unexpired), ``revoked`` or ``expired``.

    Raises:
        ValidationError: ``certificate.bad_status``.
    """
    stmt = select(CertificateRecord).order_by(CertificateRecord.id.desc())
    if query.status is not None:
        if query.status not in _STATUSES:
            raise ValidationError(
                "certificate.bad_status", f"status must be one of {', '.join(sorted(_STATUSES))}"
            )
        if query.status == "revoked":
            stmt = stmt.where(CertificateRecord.status == "revoked")
        elif query.status == "expired":
            stmt = stmt.where(
                CertificateRecord.status == "valid", CertificateRecord.not_after <= now
            )
        else:
            stmt = stmt.where(
                CertificateRecord.status == "valid", CertificateRecord.not_after > now
            )
    if query.expiring_within is not None:
        stmt = stmt.where(
            CertificateRecord.status == "valid",
            CertificateRecord.not_after > now,
            CertificateRecord.not_after <= now + query.expiring_within,
        )
    if query.ca_id is not None:
        stmt = stmt.where(CertificateRecord.ca_id == query.ca_id)
    if query.domain is not None:
        stmt = stmt.where(CertificateRecord.subject_cn == query.domain)
    if not actor.is_admin:
        member_domains = select(DomainMember.domain_id).where(
            DomainMember.principal_id == actor.principal_id
        )
        stmt = stmt.where(
            or_(
                CertificateRecord.requested_by == actor.principal_id,
                CertificateRecord.domain_id.in_(member_domains),
            )
        )
    stmt = stmt.offset(max(query.offset, 0)).limit(min(max(query.limit, 1), 1000))
    return list(session.scalars(stmt))


def certificate_holder(cert: CertificateRecord) -> Actor:
    """The actor for a device that proved possession of ``cert``'s key."""
    return Actor(principal_id=f"certificate:{cert.sha1_hex}", source="certificate")


def _check_current(record: CertificateRecord, now: dt.datetime) -> None:
    if record.status == "revoked":
        raise AuthenticationError("certificate.revoked", "the presented certificate is revoked")
    if record.not_after <= now:
        raise AuthenticationError("certificate.expired", "the presented certificate has expired")


def _consume_jti(session: Session, jti: str, expires_at: dt.datetime, now: dt.datetime) -> None:
    # Each token id is accepted once (replay protection).  The insert runs in a
    # savepoint so that a duplicate only fails this check, not the transaction.
    session.query(UsedTokenId).filter(UsedTokenId.expires_at < now - dt.timedelta(hours=2)).delete()
    try:
        with session.begin_nested():
            session.add(UsedTokenId(jti=jti, expires_at=expires_at))
    except IntegrityError:
        raise AuthenticationError(
            "certtoken.replayed", "this certificate token was already used"
        ) from None


def authenticate_certificate(
    session: Session, token: str, certificate_pem: bytes | str, *, audience: str, now: dt.datetime
) -> CertificateRecord:
    """Check a certificate token and return the current certificate it proves.

    Raises:
        ValidationError: ``certificate.malformed``.
        AuthenticationError: ``certtoken.*``, ``certificate.unknown`` (not ours),
        ``certificate.revoked``, ``certificate.expired``.
    """
    certificate = load_certificate_pem(certificate_pem)
    claims = verify_certificate_token(token, certificate, audience=audience, now=now)
    record = session.scalar(
        select(CertificateRecord).where(CertificateRecord.sha1_hex == claims.sha1_hex)
    )
    if record is None:
        raise AuthenticationError(
            "certificate.unknown", "the presented certificate was not issued here"
        )
    _check_current(record, now)
    _consume_jti(session, claims.jti, claims.expires_at, now)
    return record


def renew_with_token(
    session: Session,
    keystore: KeyStore,
    urls: CAUrlsConfig,
    *,
    token: str,
    certificate_pem: bytes | str,
    csr: bytes | str,
    validity_days: int | None,
    audience: str,
    source: str = "cli",
    now: dt.datetime,
) -> tuple[CertificateRecord, IssuedCertificate]:
    """Renew: a new certificate for the same names, for the holder of the current one.

    The caller proves possession of the current certificate's key with a
    certificate token; the new CSR may carry a new key but must name the same
    domain (its CN and SANs must be among the current certificate's names).

    Raises:
        AuthenticationError: see :func:`authenticate_certificate`.
        ValidationError, PermissionDenied: the pipeline's codes; ``domain.not_requester``
        when the CSR names something the current certificate does not.
    """
    current = authenticate_certificate(session, token, certificate_pem, audience=audience, now=now)
    return _renew(session, keystore, urls, current, csr, validity_days, source=source, now=now)


def renew_with_certificate(
    session: Session,
    keystore: KeyStore,
    urls: CAUrlsConfig,
    *,
    current: CertificateRecord,
    csr: bytes | str,
    validity_days: int | None,
    source: str,
    now: dt.datetime,
) -> tuple[CertificateRecord, IssuedCertificate]:
    """Renew for a caller already authenticated by the current certificate (EST mTLS)."""
    _check_current(current, now)
    return _renew(session, keystore, urls, current, csr, validity_days, source=source, now=now)


def authenticate_client_certificate(
    session: Session, certificate_der: bytes, *, now: dt.datetime
) -> CertificateRecord:
    """The current certificate of ours that a TLS client presented.

    The TLS layer proved possession of the key and the chain to one of our CAs;
    this checks that the certificate is one we issued, unexpired and unrevoked.

    Raises:
        AuthenticationError: ``certificate.unknown``, ``certificate.revoked``,
        ``certificate.expired``.
    """
    sha1 = hashlib.sha1(certificate_der).hexdigest().upper()  # noqa: S324 - a thumbprint
    current = session.scalar(select(CertificateRecord).where(CertificateRecord.sha1_hex == sha1))
    if current is None:
        raise AuthenticationError(
            "certificate.unknown", "the client certificate was not issued here"
        )
    _check_current(current, now)
    return current


def principal_for_client_certificate(
    session: Session, certificate_der: bytes, *, now: dt.datetime
) -> Principal:
    """The principal whose own certificate a TLS client presented (EST, RFC 7030 §3.3.2).

    A certificate is a principal's credential only when that principal requested
    it for itself: its subject CN is the principal's id and the principal is its
    requester.  A device certificate (CN = the device id, requested by an agent)
    therefore never stands for the agent that requested it.

    Raises:
        AuthenticationError: as :func:`authenticate_client_certificate`, and
        ``auth.certificate_not_a_credential`` when the certificate is not a
        principal's own.
    """
    current = authenticate_client_certificate(session, certificate_der, now=now)
    principal = session.get(Principal, current.requested_by)
    cn = (current.subject_cn or "").lower()
    if principal is None or cn != current.requested_by.lower():
        raise AuthenticationError(
            "auth.certificate_not_a_credential",
            "the client certificate is not a principal's own (CN = principal id, requested by it)",
        )
    return principal


def renew_with_client_certificate(
    session: Session,
    keystore: KeyStore,
    urls: CAUrlsConfig,
    *,
    certificate_der: bytes,
    csr: bytes | str,
    source: str,
    now: dt.datetime,
) -> tuple[CertificateRecord, IssuedCertificate]:
    """Renew for a caller whose TLS client certificate is ``certificate_der`` (EST mTLS).

    RFC 7030 §4.2.2: the CSR's subject must be identical to the current
    certificate's; its SANs, as on every renewal, must be among the current names.

    Raises:
        AuthenticationError: as :func:`authenticate_client_certificate`.
        ValidationError: ``renewal.subject_mismatch``; the pipeline's codes.
    """
    current = authenticate_client_certificate(session, certificate_der, now=now)
    requested = parse_csr(csr).csr.subject
    if requested != x509.load_der_x509_certificate(current.der).subject:
        raise ValidationError(
            "renewal.subject_mismatch",
            "the CSR's subject must be the current certificate's (RFC 7030 §4.2.2)",
        )
    return _renew(session, keystore, urls, current, csr, None, source=source, now=now)


def _renew(
    session: Session,
    keystore: KeyStore,
    urls: CAUrlsConfig,
    current: CertificateRecord,
    csr: bytes | str,
    validity_days: int | None,
    *,
    source: str,
    now: dt.datetime,
) -> tuple[CertificateRecord, IssuedCertificate]:
    ca = get_ca(session, current.ca_id)
    template_rec = get_template(session, current.template_id)
    names = {current.subject_cn, *(s.split(":", 1)[1] for s in current.sans)} - {None}
    if validity_days is None:
        # Keep the lifetime the device had, as smallstep's renew does; the template
        # still caps it.
        lifetime = current.not_after - current.not_before
        validity_days = min(
            max(1, round(lifetime / dt.timedelta(days=1))), template_rec.max_validity_days
        )
    parsed = parse_csr(csr)
    issued = issue_certificate(
        IssuanceRequest(csr=parsed, validity_days=validity_days),
        template_from_record(template_rec),
        issuer_for(ca, keystore, urls),
        may_request=lambda name: name in names,
        now=now,
    )
    holder = certificate_holder(current)
    actor = Actor(principal_id=holder.principal_id, source=source)
    record = _store(
        session,
        issued,
        ca_id=ca.id,
        template_id=template_rec.id,
        requested_by=current.requested_by,
        key_spec=parsed.key_spec.value if parsed.key_spec else "unknown",
        renews_id=current.id,
        now=now,
    )
    record_audit(
        session,
        actor,
        "certificate.renew",
        "certificate",
        record.serial_hex,
        at=now,
        details={
            "renews": current.serial_hex,
            "cn": issued.common_name,
            "not_after": issued.not_after.isoformat(),
            "sha1": issued.sha1_hex,
        },
    )
    return record, issued


def revoke(
    session: Session,
    actor: Actor,
    record: CertificateRecord,
    reason: RevocationReason,
    *,
    now: dt.datetime,
) -> CertificateRecord:
    """Revoke a certificate (domain owners, admins, or its holder) with a reason code.

    The CA's CRL is marked stale and a ``certificate.revoked`` outbox event is
    written in the same transaction, so hubs learn of it even if they are down now.

    Raises:
        PermissionDenied: ``certificate.not_owner``.
        ConflictError: ``certificate.already_revoked``.
        ValidationError: ``revocation.bad_reason`` for removeFromCRL (delta CRLs only).
    """
    allowed = actor.is_admin or actor.principal_id == certificate_holder(record).principal_id
    if not allowed and record.domain_id is not None:
        members = session.scalars(
            select(DomainMember.principal_id).where(
                DomainMember.domain_id == record.domain_id, DomainMember.role == OWNER
            )
        )
        allowed = actor.principal_id in set(members)
    if not allowed:
        raise PermissionDenied(
            "certificate.not_owner",
            "only the domain's owners or an admin may revoke this certificate",
        )
    if record.status == "revoked":
        raise ConflictError(
            "certificate.already_revoked", f"certificate {record.serial_hex} is already revoked"
        )
    if reason is RevocationReason.REMOVE_FROM_CRL:
        raise ValidationError("revocation.bad_reason", "removeFromCRL is only for delta CRLs")
    record.status = "revoked"
    record.revoked_at = now.replace(microsecond=0)
    record.revocation_reason = reason.code
    ca = get_ca(session, record.ca_id)
    ca.crl_stale = True
    enqueue_event(
        session,
        CERTIFICATE_REVOKED,
        record.serial_hex,
        {
            "serial": record.serial_hex,
            "ca_id": record.ca_id,
            "device_id": record.subject_cn,
            "sha1": record.sha1_hex,
            "sha256": record.sha256_hex,
            "reason": reason.rfc_name,
            "revoked_at": record.revoked_at.isoformat(),
        },
        at=now,
    )
    # The live hub in this process closes the session at once; the outbox delivery
    # above reaches every other consumer (hub nodes, hub links), here or elsewhere.
    notify_after_commit(
        session,
        CertificateRevoked(
            serial=record.serial_hex,
            sha1=record.sha1_hex,
            ca_id=record.ca_id,
            device_id=record.subject_cn,
        ),
    )
    record_audit(
        session,
        actor,
        "certificate.revoke",
        "certificate",
        record.serial_hex,
        at=now,
        details={"reason": reason.rfc_name, "cn": record.subject_cn},
    )
    return record


def certificate_pem(record: CertificateRecord) -> str:
    """A stored certificate as PEM text."""
    return (
        x509.load_der_x509_certificate(record.der).public_bytes(serialization.Encoding.PEM).decode()
    )


def names_of(records: Sequence[CertificateRecord]) -> list[str]:
    """The subject CNs of ``records`` (for messages)."""
    return [r.subject_cn or r.serial_hex for r in records]
