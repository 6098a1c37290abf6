"""Certificates: issue, find, search and revoke (renewal is in :mod:`fleetpki.services.renewal`)."""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from fleetpki.errors import ConflictError, NotFoundError, PermissionDenied, ValidationError
from fleetpki.keystore import KeyStore
from fleetpki.pki.csr import parse_csr
from fleetpki.pki.issuance import IssuanceRequest, IssuedCertificate, issue_certificate
from fleetpki.pki.names import SubjectAltName
from fleetpki.pki.profile import KeyUsageName
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services.audit import write_audit
from fleetpki.services.authority import (
    CAUrlsConfig,
    ca_chain_of,
    ca_record,
    current_issuer,
)
from fleetpki.services.ca_views import (
    AuditEntryView,
    CertificateView,
    ExpirySummary,
    IssuedView,
    audit_entry_view,
    ca_view,
    certificate_view,
)
from fleetpki.services.certificate_access import (
    certificate_by_serial,
    certificate_by_thumbprint,
    may_revoke,
    visible_certificate,
)
from fleetpki.services.context import Actor, Clock
from fleetpki.services.domains import DomainAccess, domain_for_request
from fleetpki.services.notifications import CertificateRevoked
from fleetpki.services.outbox import CERTIFICATE_REVOKED
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.services.ports.ca import CertificateSearch
from fleetpki.services.principals import authenticate_token_in
from fleetpki.services.signing_contexts import SigningContext, SigningContexts, TemplateChoice
from fleetpki.store.models import CertificateRecord

__all__ = [
    "MAX_ACTIVITY_DAYS",
    "CertificateQuery",
    "CertificateService",
    "DailyActivity",
    "IssueCommand",
    "issue_in",
    "issued_view",
    "revoke_in",
    "sign_and_store",
]


@dataclass(frozen=True, slots=True)
class IssueCommand:
    """A certificate request as the services take it (from CLI, EZCA routes, /v1, EST).

    Attributes:
        ca_id: the issuing CA; ``None`` lets ``domain`` choose it, or else the current
            issuer (:func:`fleetpki.services.authority.current_issuer`).
        domain: a registered domain the request is for; its CA and template are used
            unless ``ca_id`` / ``template_id`` are given.
    """

    ca_id: str | None
    csr: bytes | str
    template_id: str | None = None
    validity_days: int | None = None
    subject_cn: str | None = None
    subject_alt_names: tuple[SubjectAltName, ...] | None = None
    ekus: tuple[str, ...] | None = None
    key_usages: tuple[KeyUsageName, ...] | None = None
    domain: str | None = None


@dataclass(frozen=True, slots=True)
class CertificateQuery:
    """Filters for listing certificates."""

    domain: str | None = None
    status: str | None = None
    expiring_within: dt.timedelta | None = None
    ca_id: str | None = None
    offset: int = 0
    limit: int = 100
    #: Certificates whose subject CN contains this text (case-insensitive).
    subject_contains: str | None = None


@dataclass(frozen=True, slots=True)
class DailyActivity:
    """Certificates issued and revoked on one UTC day (of those the caller can see)."""

    day: dt.date
    issued: int
    revoked: int


#: The longest window :meth:`CertificateService.daily_activity` reports.
MAX_ACTIVITY_DAYS = 366

_STATUSES = frozenset({"valid", "revoked", "expired"})


def sign_and_store(
    tx: UnitOfWork,
    request: IssuanceRequest,
    template: TemplateChoice,
    signing: SigningContext,
    *,
    may_request: Callable[[str], bool],
    requested_by: str,
    renews_id: int | None,
    now: dt.datetime,
    domain_id_for: Callable[[str], str | None] | None = None,
) -> tuple[CertificateRecord, IssuedCertificate]:
    """Run the one issuance pipeline and record the certificate (caller's unit of work).

    Every certificate fleetpki signs (device, renewal, EST, the server's own) goes
    through here, so CRLs and OCSP know of each. ``domain_id_for`` finds the domain the
    certificate is recorded under (default: by name under the signing CA).

    Raises:
        ValidationError, PermissionDenied: the pipeline's codes; nothing is signed then.
    """
    issued = issue_certificate(
        request, template.template, signing.issuer, may_request=may_request, now=now
    )
    domain_name = issued.common_name or (
        issued.subject_alt_names[0].value if issued.subject_alt_names else None
    )
    if domain_id_for is None:
        domain_id = tx.domains.id_for(signing.ca_id, domain_name) if domain_name else None
    else:
        domain_id = domain_id_for(domain_name) if domain_name else None
    record = CertificateRecord(
        ca_id=signing.ca_id,
        template_id=template.template_id,
        domain_id=domain_id,
        serial_hex=issued.serial_hex,
        subject_cn=issued.common_name,
        sans=[f"{san.type.name}:{san.value}" for san in issued.subject_alt_names],
        key_spec=request.csr.key_spec.value if request.csr.key_spec else "unknown",
        not_before=issued.not_before,
        not_after=issued.not_after,
        sha1_hex=issued.sha1_hex,
        sha256_hex=issued.sha256_hex,
        der=issued.der,
        status="valid",
        requested_by=requested_by,
        renews_id=renews_id,
        created_at=now,
        ca_generation=signing.generation,
    )
    tx.certificates.add(record)
    return record, issued


def _target_id(
    tx: UnitOfWork, actor: Actor, command: IssueCommand, now: dt.datetime
) -> tuple[str, str | None]:
    if command.domain is not None:
        found = domain_for_request(tx, actor, command.domain, command.ca_id)
        return found.ca_id, command.template_id or found.template_id
    if command.ca_id is not None:
        return command.ca_id, command.template_id
    return current_issuer(tx, now).id, command.template_id


def issue_in(
    tx: UnitOfWork,
    actor: Actor,
    contexts: SigningContexts,
    command: IssueCommand,
    *,
    now: dt.datetime,
) -> tuple[CertificateRecord, IssuedCertificate, SigningContext]:
    """Issue a certificate for a CSR under a template of an issuing CA (caller's unit).

    Returns the record, what was signed, and the signing context (with the chain).

    Raises:
        NotFoundError: ``ca.not_found``, ``ca.no_current_issuer``, ``template.not_found``,
        ``domain.not_found``.
        ValidationError: ``ca.not_issuing`` for a root, ``ca.retired``.
        ValidationError, PermissionDenied: the pipeline's codes (``csr.*``,
        ``template.*``, ``domain.not_requester``); nothing is signed or stored then.
    """
    ca_id, template_id = _target_id(tx, actor, command, now)
    signing = contexts.get(tx, ca_id)
    template = contexts.template(tx, signing.ca_id, template_id)
    request = IssuanceRequest(
        csr=parse_csr(command.csr),
        validity_days=command.validity_days,
        subject_cn=command.subject_cn,
        subject_alt_names=command.subject_alt_names,
        ekus=command.ekus,
        key_usages=command.key_usages,
    )
    access = DomainAccess(tx, actor, signing.ca_id)
    record, issued = sign_and_store(
        tx,
        request,
        template,
        signing,
        may_request=access.may_request,
        domain_id_for=access.domain_id,
        requested_by=actor.principal_id,
        renews_id=None,
        now=now,
    )
    write_audit(
        tx,
        actor,
        "certificate.issue",
        "certificate",
        record.serial_hex,
        at=now,
        details={
            "ca_id": signing.ca_id,
            "cn": issued.common_name,
            "sans": record.sans,
            "not_after": issued.not_after.isoformat(),
            "sha1": issued.sha1_hex,
        },
    )
    return record, issued, signing


def issued_view(tx: UnitOfWork, record: CertificateRecord, issued: IssuedCertificate) -> IssuedView:
    """The view of a certificate just issued, with its CA chain (caller's unit)."""
    chain = ca_chain_of(tx, ca_record(tx, record.ca_id), record.ca_generation)
    return IssuedView(certificate_view(record), issued, tuple(chain))


def revoke_in(
    tx: UnitOfWork,
    actor: Actor,
    record: CertificateRecord,
    reason: RevocationReason,
    *,
    now: dt.datetime,
) -> CertificateRecord:
    """Revoke a certificate (domain owners, admins, or its holder) with a reason code.

    The CA's CRL is marked stale and a ``certificate.revoked`` outbox event is written
    in the caller's unit of work, so hubs learn of it even if they are down now; the
    in-process bus hears :class:`CertificateRevoked` once the unit commits.

    Raises:
        PermissionDenied: ``certificate.not_owner``.
        ConflictError: ``certificate.already_revoked``.
        ValidationError: ``revocation.bad_reason`` for removeFromCRL (delta CRLs only).
    """
    if not may_revoke(tx, actor, record):
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
    revoked_at = now.replace(microsecond=0)
    record.revoked_at = revoked_at
    record.revocation_reason = reason.code
    # One UPDATE of the generation's row, whatever the number of revoked certificates:
    # the CRL itself is rebuilt in the background (services.crl_publisher).
    # The revision stamps the certificate: the next CRL adds the revocations since the
    # previous one was built (services.crl_publisher).
    record.revoked_revision = tx.cas.mark_crl_stale(record.ca_id, record.ca_generation)
    tx.events.append(
        CERTIFICATE_REVOKED,
        record.serial_hex,
        {
            "serial": record.serial_hex,
            "ca_id": record.ca_id,
            "device_id": record.subject_cn,
            "sha1": record.sha1_hex,
            "sha256": record.sha256_hex,
            "reason": reason.rfc_name,
            "revoked_at": revoked_at.isoformat(),
        },
        at=now,
        broadcast=True,  # hub nodes elsewhere close the session on it at once
    )
    # The live hub in this process closes the session at once; the outbox delivery
    # above reaches every other consumer (hub nodes, hub links), here or elsewhere.
    tx.publish(
        CertificateRevoked(
            serial=record.serial_hex,
            sha1=record.sha1_hex,
            ca_id=record.ca_id,
            device_id=record.subject_cn,
        )
    )
    write_audit(
        tx,
        actor,
        "certificate.revoke",
        "certificate",
        record.serial_hex,
        at=now,
        details={"reason": reason.rfc_name, "cn": record.subject_cn},
    )
    return record


def search_in(
    tx: UnitOfWork, actor: Actor, query: CertificateQuery, *, now: dt.datetime
) -> list[CertificateRecord]:
    """Certificates the actor requested or whose domain it belongs to, all for admins.

    ``status`` is ``valid`` (unrevoked and unexpired), ``revoked`` or ``expired``.

    Raises:
        ValidationError: ``certificate.bad_status``.
    """
    if query.status is not None and query.status not in _STATUSES:
        raise ValidationError(
            "certificate.bad_status", f"status must be one of {', '.join(sorted(_STATUSES))}"
        )
    return tx.certificates.search(
        CertificateSearch(
            now=now,
            subject_cn=query.domain,
            status=query.status,
            expiring_before=now + query.expiring_within if query.expiring_within else None,
            ca_id=query.ca_id,
            visible_to=None if actor.is_admin else actor.principal_id,
            offset=query.offset,
            limit=query.limit,
            subject_contains=query.subject_contains or None,
        )
    )


def _view_with_renewed(tx: UnitOfWork, record: CertificateRecord) -> CertificateView:
    renews = tx.certificates.get(record.renews_id) if record.renews_id else None
    successor = tx.certificates.successor_of(record.id)
    return certificate_view(
        record,
        renews.serial_hex if renews else None,
        successor.serial_hex if successor else None,
    )


# -- the use cases -----------------------------------------------------------------------


class CertificateService:
    """Certificates: issue, find, search, revoke, and their audit trail.

    Args:
        store: the database.
        keystore: custody of CA keys.
        clock: the source of "now".
        urls: where CRLs, OCSP and CA certificates are published.
        contexts: the signing contexts and templates of this process.
    """

    def __init__(
        self,
        store: Store,
        keystore: KeyStore,
        clock: Clock,
        urls: CAUrlsConfig,
        contexts: SigningContexts,
    ) -> None:
        self._store = store
        self._keystore = keystore
        self._clock = clock
        self._urls = urls
        self._contexts = contexts

    def issue(self, actor: Actor, command: IssueCommand) -> IssuedView:
        """Issue a certificate for a CSR (see :func:`issue_in` for the errors)."""
        with self._store.transaction() as tx:
            record, issued, signing = issue_in(
                tx, actor, self._contexts, command, now=self._clock()
            )
        return IssuedView(certificate_view(record), issued, signing.chain)

    def issue_with_token(self, secret: str, source: str, command: IssueCommand) -> IssuedView:
        """Authenticate an API token and issue for its principal, in one unit of work.

        The hot path of ``POST /v1/certificates``: the token's check and the issuance
        share one transaction (and on SQLite one connection's page cache) rather than
        a read unit then a write unit.

        Raises:
            AuthenticationError: ``auth.bad_token``; nothing is written then.
            ...: as :meth:`issue`.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            holder = authenticate_token_in(tx, secret, now=now)
            actor = Actor(principal_id=holder.principal_id, is_admin=holder.is_admin, source=source)
            record, issued, signing = issue_in(tx, actor, self._contexts, command, now=now)
        return IssuedView(certificate_view(record), issued, signing.chain)

    def search(self, actor: Actor, query: CertificateQuery) -> list[CertificateView]:
        """Certificates the actor can see, newest first, with filters.

        Raises:
            ValidationError: ``certificate.bad_status``.
        """
        with self._store.reading() as tx:
            return [certificate_view(r) for r in search_in(tx, actor, query, now=self._clock())]

    def get(self, actor: Actor, serial: str) -> CertificateView:
        """One certificate the actor can see, by serial number in hex.

        Raises:
            NotFoundError: ``certificate.not_found``, also when the actor cannot see it.
        """
        with self._store.reading() as tx:
            record = certificate_by_serial(tx, serial)
            visible_certificate(tx, actor, record)
            return _view_with_renewed(tx, record)

    def chain_of(self, actor: Actor, serial: str) -> builtins.list[x509.Certificate]:
        """The CA chain of one certificate the actor can see: the generation of its CA
        that issued it, up to the root, with a root rollover's link certificates.

        Raises:
            NotFoundError: ``certificate.not_found``, also when the actor cannot see it.
        """
        with self._store.reading() as tx:
            record = certificate_by_serial(tx, serial)
            visible_certificate(tx, actor, record)
            return ca_chain_of(tx, ca_record(tx, record.ca_id), record.ca_generation)

    def get_by_thumbprint(self, actor: Actor, thumbprint: str) -> CertificateView:
        """One certificate the actor can see, by SHA-1 or SHA-256 thumbprint.

        Raises:
            NotFoundError: ``certificate.not_found``, also when the actor cannot see it.
        """
        with self._store.reading() as tx:
            record = certificate_by_thumbprint(tx, thumbprint)
            visible_certificate(tx, actor, record)
            return _view_with_renewed(tx, record)

    def revoke(self, actor: Actor, serial: str, reason: RevocationReason) -> CertificateView:
        """Revoke a certificate the actor can see, by serial (see :func:`revoke_in`).

        Raises:
            NotFoundError: ``certificate.not_found``, also when the actor cannot see it.
            PermissionDenied, ConflictError, ValidationError: see :func:`revoke_in`.
        """
        with self._store.transaction() as tx:
            record = certificate_by_serial(tx, serial)
            visible_certificate(tx, actor, record)
            return certificate_view(revoke_in(tx, actor, record, reason, now=self._clock()))

    def revoke_by_thumbprint(
        self,
        actor: Actor,
        thumbprint: str,
        reason: RevocationReason,
        *,
        ca_id: str | None = None,
    ) -> CertificateView:
        """Revoke the certificate with this SHA-1 (or SHA-256) thumbprint, EZCA-style.

        Raises:
            NotFoundError: ``certificate.not_found`` (also when it belongs to another CA
            or the caller cannot see it), ``ca.not_found``.
            PermissionDenied, ConflictError, ValidationError: see :func:`revoke_in`.
        """
        with self._store.transaction() as tx:
            record = certificate_by_thumbprint(tx, thumbprint)
            if ca_id is not None and record.ca_id != ca_record(tx, ca_id).id:
                raise NotFoundError(
                    "certificate.not_found", f"no certificate {thumbprint} under that CA"
                )
            visible_certificate(tx, actor, record)
            return certificate_view(revoke_in(tx, actor, record, reason, now=self._clock()))

    def audit(self, actor: Actor, serial: str, *, limit: int = 100) -> list[AuditEntryView]:
        """The audit entries of one certificate the actor can see, newest first.

        Raises:
            NotFoundError: ``certificate.not_found``.
        """
        with self._store.transaction() as tx:
            record = certificate_by_serial(tx, serial)
            visible_certificate(tx, actor, record)
            entries = tx.audit.latest(
                object_type="certificate",
                object_id=record.serial_hex,
                limit=min(max(limit, 1), 1000),
            )
            return [audit_entry_view(e) for e in entries]

    def daily_activity(self, actor: Actor, *, days: int = 30) -> list[DailyActivity]:
        """Issuances and revocations per UTC day over the last ``days`` days, oldest first,
        counting the certificates the actor can see (every one for admins).

        Raises:
            ValidationError: ``certificate.bad_window`` outside 1..:data:`MAX_ACTIVITY_DAYS`.
        """
        if not 1 <= days <= MAX_ACTIVITY_DAYS:
            raise ValidationError(
                "certificate.bad_window", f"days must be from 1 to {MAX_ACTIVITY_DAYS}"
            )
        today = self._clock().astimezone(dt.UTC).date()
        first = today - dt.timedelta(days=days - 1)
        since = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
        with self._store.transaction() as tx:
            rows = tx.certificates.activity_since(
                since, visible_to=None if actor.is_admin else actor.principal_id
            )
        issued: dict[dt.date, int] = {}
        revoked: dict[dt.date, int] = {}
        for created_at, revoked_at in rows:
            for when, counts in ((created_at, issued), (revoked_at, revoked)):
                if when is not None and when >= since:
                    day = when.astimezone(dt.UTC).date()
                    counts[day] = counts.get(day, 0) + 1
        return [
            DailyActivity(day, issued.get(day, 0), revoked.get(day, 0))
            for day in (first + dt.timedelta(days=n) for n in range(days))
        ]

    def expiry_summary(self) -> ExpirySummary:
        """Every CA and the nearest expiry of a valid leaf (for monitoring)."""
        with self._store.transaction() as tx:
            return ExpirySummary(
                tuple(ca_view(ca) for ca in tx.cas.all()),
                tx.certificates.nearest_expiry(self._clock()),
            )
