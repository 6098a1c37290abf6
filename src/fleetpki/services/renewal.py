"""Renewal with the current certificate: certificate tokens, TLS client certificates, reissue.

A device renews with its current certificate as its only credential (smallstep's
``ca/renew.go`` habit): by a certificate token signed with the current key (the EZCA
and /v1 routes), or by presenting the current certificate as its TLS client
certificate (EST ``simplereenroll``, RFC 7030 §4.2.2).

A certificate renews once. Its successor supersedes it: a second renewal with it is
refused (``certificate.superseded``), except the retry of the renewal that made the
successor (a CSR for the successor's key gets the successor back, so a device whose
answer was lost can recover), and once a grace period has passed it is revoked with
reason superseded (:meth:`RenewalService.revoke_superseded`, run by the server's
housekeeping). A stolen certificate therefore mints at most one successor, and the
audit log holds the chain: ``certificate.renew`` on the successor names the
certificate it renews, ``certificate.superseded`` on the predecessor names its successor.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib

import jwt
from cryptography import x509

from fleetpki.errors import AuthenticationError, ConflictError, NotFoundError, ValidationError
from fleetpki.pki.certtoken import verify_certificate_token
from fleetpki.pki.csr import ParsedCSR, parse_csr
from fleetpki.pki.issuance import IssuanceRequest, IssuedCertificate
from fleetpki.pki.names import SubjectAltName
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services.audit import write_audit
from fleetpki.services.ca_views import IssuedView, PrincipalView, principal_view
from fleetpki.services.certificates import (
    certificate_by_thumbprint,
    certificate_holder,
    certificate_pem,
    issued_view,
    load_certificate_pem,
    revoke_in,
    sign_and_store,
)
from fleetpki.services.context import LOCAL_ADMIN_ID, Actor, Clock
from fleetpki.services.outbox import CERTIFICATE_RENEWED
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.services.signing_contexts import SigningContexts
from fleetpki.store.models import CertificateRecord, Principal

__all__ = [
    "DEFAULT_SUPERSEDED_GRACE",
    "RenewalService",
    "authenticate_certificate_in",
    "authenticate_certificate_token_in",
    "authenticate_client_certificate_in",
    "check_current",
    "principal_for_client_certificate_in",
    "renew_in",
    "renew_with_client_certificate_in",
]


#: How long a renewed certificate stays valid beside its successor before it is revoked.
DEFAULT_SUPERSEDED_GRACE = dt.timedelta(days=1)
# How many superseded certificates one housekeeping pass revokes (the rest wait a pass).
_REVOKE_BATCH = 500


def check_current(record: CertificateRecord, now: dt.datetime) -> None:
    """Refuse a certificate that is revoked or expired as a credential.

    Raises:
        AuthenticationError: ``certificate.revoked``, ``certificate.expired``.
    """
    if record.status == "revoked":
        raise AuthenticationError("certificate.revoked", "the presented certificate is revoked")
    if record.not_after <= now:
        raise AuthenticationError("certificate.expired", "the presented certificate has expired")


# -- code shared by use cases: runs inside the caller's unit of work ---------------------


def authenticate_certificate_in(
    tx: UnitOfWork, token: str, certificate_pem: bytes | str, *, audience: str, now: dt.datetime
) -> CertificateRecord:
    """Check a certificate token and return the current certificate it proves (caller's unit).

    Each token id is accepted once (replay protection).

    Raises:
        ValidationError: ``certificate.malformed``.
        AuthenticationError: ``certtoken.*``, ``certificate.unknown`` (not ours),
        ``certificate.revoked``, ``certificate.expired``.
    """
    certificate = load_certificate_pem(certificate_pem)
    claims = verify_certificate_token(token, certificate, audience=audience, now=now)
    record = tx.certificates.find_by_sha1(claims.sha1_hex)
    if record is None:
        raise AuthenticationError(
            "certificate.unknown", "the presented certificate was not issued here"
        )
    check_current(record, now)
    if not tx.used_tokens.consume(claims.jti, claims.expires_at, now=now):
        raise AuthenticationError("certtoken.replayed", "this certificate token was already used")
    return record


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


def authenticate_certificate_token_in(
    tx: UnitOfWork,
    token: str,
    *,
    certificate_pem_text: bytes | str | None = None,
    audience: str,
    now: dt.datetime,
) -> CertificateRecord:
    """Check a certificate token, with the certificate given or found by ``x5t`` (caller's unit).

    EZCA's RevokeCertificate sends no body: the certificate is then the stored one
    whose SHA-1 thumbprint the token's ``x5t`` names.

    Raises:
        AuthenticationError: ``certtoken.*``, ``certificate.unknown``,
        ``certificate.revoked``, ``certificate.expired``.
        ValidationError: ``certificate.malformed``.
    """
    if certificate_pem_text is None:
        try:
            stored = certificate_by_thumbprint(tx, _thumbprint_from_token(token))
        except NotFoundError:
            raise AuthenticationError(
                "certificate.unknown", "the token names a certificate not issued here"
            ) from None
        certificate_pem_text = certificate_pem(stored)
    return authenticate_certificate_in(tx, token, certificate_pem_text, audience=audience, now=now)


def authenticate_client_certificate_in(
    tx: UnitOfWork, certificate_der: bytes, *, now: dt.datetime
) -> CertificateRecord:
    """The current certificate of ours that a TLS client presented (caller's unit).

    The TLS layer proved possession of the key and the chain to one of our CAs;
    this checks that the certificate is one we issued, unexpired and unrevoked.

    Raises:
        AuthenticationError: ``certificate.unknown``, ``certificate.revoked``,
        ``certificate.expired``.
    """
    sha1 = hashlib.sha1(certificate_der).hexdigest().upper()  # noqa: S324 - a thumbprint
    current = tx.certificates.find_by_sha1(sha1)
    if current is None:
        raise AuthenticationError(
            "certificate.unknown", "the client certificate was not issued here"
        )
    check_current(current, now)
    return current


def principal_for_client_certificate_in(
    tx: UnitOfWork, certificate_der: bytes, *, now: dt.datetime
) -> Principal:
    """The principal whose own certificate a TLS client presented (EST, RFC 7030 §3.3.2).

    A certificate is a principal's credential only when that principal requested
    it for itself: its subject CN is the principal's id and the principal is its
    requester. A device certificate (CN = the device id, requested by an agent)
    therefore never stands for the agent that requested it. Runs in the caller's unit.

    Raises:
        AuthenticationError: as :func:`authenticate_client_certificate_in`, and
        ``auth.certificate_not_a_credential`` when the certificate is not a
        principal's own.
    """
    current = authenticate_client_certificate_in(tx, certificate_der, now=now)
    principal = tx.principals.get(current.requested_by)
    cn = (current.subject_cn or "").lower()
    if principal is None or cn != current.requested_by.lower():
        raise AuthenticationError(
            "auth.certificate_not_a_credential",
            "the client certificate is not a principal's own (CN = principal id, requested by it)",
        )
    return principal


def renew_in(
    tx: UnitOfWork,
    contexts: SigningContexts,
    current: CertificateRecord,
    csr: bytes | str,
    validity_days: int | None,
    *,
    source: str,
    now: dt.datetime,
) -> tuple[CertificateRecord, IssuedCertificate]:
    """A new certificate for the names of ``current``, for its holder (caller's unit).

    The new CSR may carry a new key but must name the same domain (its CN and SANs
    must be among the current certificate's names). A certificate renews once: the
    row is locked so that two renewals at once cannot both pass, and a certificate
    that already has a successor is refused, unless the CSR is for the successor's
    key (the retry of the renewal that made it), which gets the successor back.

    Raises:
        ValidationError, PermissionDenied: the pipeline's codes; ``domain.not_requester``
        when the CSR names something the current certificate does not.
        ConflictError: ``certificate.superseded`` when it was renewed already.
        AuthenticationError: ``certificate.revoked`` when revoked meanwhile.
    """
    parsed = parse_csr(csr)
    current = tx.certificates.lock(current.id)
    check_current(current, now)
    successor = tx.certificates.successor_of(current.id)
    if successor is not None:
        if _same_public_key(parsed, successor):
            return successor, _issued_of(successor)
        raise ConflictError(
            "certificate.superseded",
            f"certificate {current.serial_hex} was renewed already (by {successor.serial_hex}) "
            "and cannot renew again; renew with its successor",
        )
    signing = contexts.get(tx, current.ca_id)
    template = contexts.template(tx, current.ca_id, current.template_id)
    names = {current.subject_cn, *(s.split(":", 1)[1] for s in current.sans)} - {None}
    if validity_days is None:
        # Keep the lifetime the device had, as smallstep's renew does; the template
        # still caps it.
        lifetime = current.not_after - current.not_before
        validity_days = min(
            max(1, round(lifetime / dt.timedelta(days=1))), template.template.max_validity_days
        )
    record, issued = sign_and_store(
        tx,
        IssuanceRequest(csr=parsed, validity_days=validity_days),
        template,
        signing,
        may_request=lambda name: name in names,
        requested_by=current.requested_by,
        renews_id=current.id,
        now=now,
    )
    holder = certificate_holder(current)
    write_audit(
        tx,
        Actor(principal_id=holder.principal_id, source=source),
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
    write_audit(
        tx,
        Actor(principal_id=holder.principal_id, source=source),
        "certificate.superseded",
        "certificate",
        current.serial_hex,
        at=now,
        details={"by": record.serial_hex, "cn": current.subject_cn},
    )
    tx.events.append(
        CERTIFICATE_RENEWED,
        record.serial_hex,
        {
            "serial": record.serial_hex,
            "renews": current.serial_hex,
            "ca_id": record.ca_id,
            "device_id": record.subject_cn,
            "sha1": record.sha1_hex,
            "not_after": record.not_after.isoformat(),
        },
        at=now,
    )
    return record, issued


def _same_public_key(parsed: ParsedCSR, record: CertificateRecord) -> bool:
    issued_key = x509.load_der_x509_certificate(record.der).public_key()
    return bool(parsed.public_key == issued_key)


def _issued_of(record: CertificateRecord) -> IssuedCertificate:
    """The issuance result of a stored certificate (for the retry of a renewal)."""
    certificate = x509.load_der_x509_certificate(record.der)
    return IssuedCertificate(
        certificate=certificate,
        der=record.der,
        serial_hex=record.serial_hex,
        sha1_hex=record.sha1_hex,
        sha256_hex=record.sha256_hex,
        common_name=record.subject_cn,
        subject_alt_names=_sans_of(certificate),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )


def _sans_of(certificate: x509.Certificate) -> tuple[SubjectAltName, ...]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(SubjectAltName.from_general_name(name) for name in extension.value)


def revoke_superseded_in(
    tx: UnitOfWork, *, grace: dt.timedelta, now: dt.datetime, limit: int = _REVOKE_BATCH
) -> list[CertificateRecord]:
    """Revoke (reason superseded) the certificates renewed more than ``grace`` ago.

    Runs in the caller's unit; each revocation reaches the hubs through the outbox like
    any other (``certificate.revoked``) and is audited by the CA's housekeeping.
    """
    actor = Actor(LOCAL_ADMIN_ID, is_admin=True, source="renewal housekeeping")
    revoked = []
    for record in tx.certificates.superseded(renewed_before=now - grace, now=now, limit=limit):
        revoke_in(tx, actor, record, RevocationReason.SUPERSEDED, now=now)
        revoked.append(record)
    return revoked


def renew_with_client_certificate_in(
    tx: UnitOfWork,
    contexts: SigningContexts,
    certificate_der: bytes,
    csr: bytes | str,
    *,
    source: str,
    now: dt.datetime,
) -> tuple[CertificateRecord, IssuedCertificate]:
    """Renew for a caller whose TLS client certificate is ``certificate_der`` (caller's unit).

    RFC 7030 §4.2.2: the CSR's subject must be identical to the current
    certificate's; its SANs, as on every renewal, must be among the current names.

    Raises:
        AuthenticationError: as :func:`authenticate_client_certificate_in`.
        ValidationError: ``renewal.subject_mismatch``; the pipeline's codes.
    """
    current = authenticate_client_certificate_in(tx, certificate_der, now=now)
    requested = parse_csr(csr).csr.subject
    if requested != x509.load_der_x509_certificate(current.der).subject:
        raise ValidationError(
            "renewal.subject_mismatch",
            "the CSR's subject must be the current certificate's (RFC 7030 §4.2.2)",
        )
    return renew_in(tx, contexts, current, csr, None, source=source, now=now)


# -- the use cases -----------------------------------------------------------------------


class RenewalService:
    """Renewal by the holder of the current certificate, and certificate credentials.

    Args:
        store: the database.
        clock: the source of "now".
        contexts: the signing contexts and templates of this process.
        audience: the ``aud`` certificate tokens must carry (this CA's public URL).
        superseded_grace: how long a renewed certificate stays valid beside its
            successor before :meth:`revoke_superseded` revokes it.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        contexts: SigningContexts,
        *,
        audience: str,
        superseded_grace: dt.timedelta = DEFAULT_SUPERSEDED_GRACE,
    ) -> None:
        self._store = store
        self._clock = clock
        self._contexts = contexts
        self._audience = audience
        self._grace = superseded_grace

    def revoke_superseded(self) -> list[str]:
        """Revoke every certificate renewed more than the grace period ago; their serials.

        The server's housekeeping runs this every minute (``fleetpki serve``). A pass
        revokes at most a batch; the rest wait for the next pass.
        """
        with self._store.transaction() as tx:
            revoked = revoke_superseded_in(tx, grace=self._grace, now=self._clock())
            return [r.serial_hex for r in revoked]

    def renew_with_token(
        self,
        *,
        token: str,
        certificate_pem: bytes | str,
        csr: bytes | str,
        validity_days: int | None = None,
        source: str = "cli",
    ) -> IssuedView:
        """Renew: a new certificate for the same names, for the holder of the current one.

        The caller proves possession of the current certificate's key with a
        certificate token.

        Raises:
            AuthenticationError: see :func:`authenticate_certificate_in`.
            ValidationError, PermissionDenied: see :func:`renew_in`.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            current = authenticate_certificate_in(
                tx, token, certificate_pem, audience=self._audience, now=now
            )
            record, issued = renew_in(
                tx, self._contexts, current, csr, validity_days, source=source, now=now
            )
            return issued_view(tx, record, issued)

    def renew_with_client_certificate(
        self, *, certificate_der: bytes, csr: bytes | str, source: str
    ) -> IssuedView:
        """Renew for the holder of the TLS client certificate (EST ``simplereenroll``).

        Raises:
            AuthenticationError, ValidationError: see :func:`renew_with_client_certificate_in`.
        """
        with self._store.transaction() as tx:
            record, issued = renew_with_client_certificate_in(
                tx,
                self._contexts,
                certificate_der,
                csr,
                source=source,
                now=self._clock(),
            )
            return issued_view(tx, record, issued)

    def principal_for_client_certificate(self, certificate_der: bytes) -> PrincipalView:
        """The principal whose own certificate a TLS client presented (EST agents).

        Raises:
            AuthenticationError: see :func:`principal_for_client_certificate_in`.
        """
        with self._store.transaction() as tx:
            return principal_view(
                principal_for_client_certificate_in(tx, certificate_der, now=self._clock())
            )
