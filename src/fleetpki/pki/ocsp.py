"""OCSP: parse requests and build signed responses per RFC 6960, with RFC 8954 nonces."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetpki.errors import FleetPKIError, ValidationError
from fleetpki.keystore import PublicKey, Signer
from fleetpki.pki.extensions import key_usage
from fleetpki.pki.ocsp_request import (
    CERT_ID_HASHES,
    MAX_NONCE_LENGTH,
    MAX_REQUEST_SIZE,
    CertId,
    OcspRequest,
    issuer_hashes,
    parse_ocsp_request,
    parse_ocsp_request_path,
)
from fleetpki.pki.revocation import RevocationReason

__all__ = [
    "MAX_NONCE_LENGTH",
    "MAX_REQUEST_SIZE",
    "CertId",
    "CertificateStatus",
    "OcspRequest",
    "OcspResponder",
    "build_ocsp_error_response",
    "build_ocsp_response",
    "build_ocsp_signing_certificate",
    "issuer_hashes",
    "parse_ocsp_request",
    "parse_ocsp_request_path",
    "response_status_for",
]

# Theory of operation.  A responder service calls `parse_ocsp_request` on a POST
# body (or `parse_ocsp_request_path` on the tail of a GET URL), finds the CA whose
# certificate `CertId.names_issuer`, looks up the serial number, and calls
# `build_ocsp_response` with a `CertificateStatus`.  The response is signed by the
# CA itself or by a delegated responder whose certificate
# `build_ocsp_signing_certificate` made (RFC 6960 §4.2.2.2).  Whatever goes wrong
# surfaces as a ValidationError; the service turns it into an unsuccessful OCSP
# response with `response_status_for` and `build_ocsp_error_response`.


# Which unsuccessful status answers which error (RFC 6960 §4.2.1); any other
# error is the responder's own fault: internalError.
_STATUS_BY_CODE: dict[str, ocsp.OCSPResponseStatus] = {
    "ocsp.malformed_request": ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
    "ocsp.bad_nonce": ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
    "ocsp.unsupported_hash": ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
    "ocsp.unauthorized": ocsp.OCSPResponseStatus.UNAUTHORIZED,
}


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """The answer for one certificate: RFC 6960 §4.2.1 ``CertStatus``.

    Build one with :meth:`good`, :meth:`revoked` or :meth:`unknown`.

    Args:
        state: good, revoked or unknown.
        revoked_at: the revocation time; given exactly when revoked.
        reason: the revocation reason; given exactly when revoked.

    Raises:
        ValidationError: ``ocsp.bad_status`` when the time and reason do not go
            with the state or the time is naive; ``revocation.bad_reason`` for
            ``removeFromCRL``.
    """

    state: ocsp.OCSPCertStatus
    revoked_at: dt.datetime | None = None
    reason: RevocationReason | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.state, ocsp.OCSPCertStatus):
            raise ValidationError("ocsp.bad_status", f"unknown certificate status {self.state!r}")
        if self.state is not ocsp.OCSPCertStatus.REVOKED:
            if self.revoked_at is not None or self.reason is not None:
                raise ValidationError(
                    "ocsp.bad_status", "only a revoked status has a revocation time and reason"
                )
            return
        if self.revoked_at is None or self.revoked_at.utcoffset() is None:
            raise ValidationError(
                "ocsp.bad_status", "a revoked status needs a timezone-aware revocation time"
            )
        if not isinstance(self.reason, RevocationReason):
            raise ValidationError("ocsp.bad_status", "a revoked status needs a RevocationReason")
        if self.reason is RevocationReason.REMOVE_FROM_CRL:
            # removeFromCRL un-revokes (RFC 5280 §5.3.1); such a certificate is good.
            raise ValidationError(
                "revocation.bad_reason", "removeFromCRL is not a reason to be revoked"
            )

    @classmethod
    def good(cls) -> CertificateStatus:
        """The certificate is not revoked (RFC 6960 §2.2 "good")."""
        return cls(ocsp.OCSPCertStatus.GOOD)

    @classmethod
    def unknown(cls) -> CertificateStatus:
        """The responder knows the issuer but not this serial number."""
        return cls(ocsp.OCSPCertStatus.UNKNOWN)

    @classmethod
    def revoked(
        cls, revoked_at: dt.datetime, reason: RevocationReason = RevocationReason.UNSPECIFIED
    ) -> CertificateStatus:
        """The certificate was revoked at ``revoked_at`` for ``reason``.

        Raises:
            ValidationError: ``ocsp.bad_status`` or ``revocation.bad_reason``, as
                for the class.
        """
        return cls(ocsp.OCSPCertStatus.REVOKED, revoked_at, reason)


def build_ocsp_response(
    request: OcspRequest,
    status: CertificateStatus,
    *,
    issuer_cert: x509.Certificate,
    responder_cert: x509.Certificate,
    signer: Signer,
    this_update: dt.datetime,
    next_update: dt.datetime | None,
) -> bytes:
    """Build and sign a successful basic OCSP response (RFC 6960 §4.2.1) and return its DER.

    The single response repeats the request's CertID (same hash algorithm); the
    responder is identified by key hash (§4.2.2.3); the nonce is echoed when the
    request had one (RFC 8954 §2.1); a revoked status carries its time and,
    unless ``unspecified``, its reason.  A delegated responder's certificate
    travels in the response so that clients can verify it (§4.2.2.2).

    Args:
        request: the parsed request.
        status: the answer for the certificate asked about.
        issuer_cert: the CA that issued the certificate asked about.
        responder_cert: ``issuer_cert`` itself, or a delegated OCSP signing
            certificate that it issued.
        signer: the key of ``responder_cert``.
        this_update: when the status was known to be correct, timezone-aware.
        next_update: when newer information will be available, or ``None``
            when it always is (§4.2.2.1).

    Raises:
        ValidationError: ``ocsp.unauthorized`` when the request names another
            issuer; ``ocsp.bad_responder`` when ``responder_cert`` may not answer
            for ``issuer_cert``; ``ocsp.responder_not_valid`` when it is outside its
            validity at ``this_update``; ``ocsp.signer_mismatch`` when ``signer``
            does not hold its key; ``ocsp.bad_validity`` for naive or misordered times.
    """
    if not request.cert_id.names_issuer(issuer_cert):
        raise ValidationError(
            "ocsp.unauthorized", "this responder does not serve the issuer in the request"
        )
    _validity(this_update, next_update)
    responder = OcspResponder.create(issuer_cert, responder_cert, signer)
    return responder.respond(request, status, this_update=this_update, next_update=next_update)


class OcspResponder:
    """One responder, checked once and ready to sign many responses.

    :func:`build_ocsp_response` checks the responder for every response; a server that
    answers many requests for one CA builds an ``OcspResponder`` once (:meth:`create`)
    and calls :meth:`respond` for each, which checks only what changes with the request
    and the time.  The issuer's CertID hashes are computed once per hash algorithm.
    """

    __slots__ = ("_hashes", "issuer_cert", "responder_cert", "signer")

    def __init__(
        self, issuer_cert: x509.Certificate, responder_cert: x509.Certificate, signer: Signer
    ) -> None:
        self.issuer_cert = issuer_cert
        self.responder_cert = responder_cert
        self.signer = signer
        self._hashes: dict[str, tuple[bytes, bytes]] = {}

    @classmethod
    def create(
        cls, issuer_cert: x509.Certificate, responder_cert: x509.Certificate, signer: Signer
    ) -> OcspResponder:
        """A responder for certificates ``issuer_cert`` issued (RFC 6960 §4.2.2.2).

        Args:
            issuer_cert: the CA.
            responder_cert: ``issuer_cert`` itself, or a delegated OCSP signing
                certificate that it issued.
            signer: the key of ``responder_cert``.

        Raises:
            ValidationError: ``ocsp.signer_mismatch`` when ``signer`` does not hold the
                responder's key; ``ocsp.bad_responder`` when ``responder_cert`` may not
                answer for ``issuer_cert``.
        """
        _check_responder(issuer_cert, responder_cert, signer)
        return cls(issuer_cert, responder_cert, signer)

    def serves(self, cert_id: CertId) -> bool:
        """Whether ``cert_id`` names this responder's issuer."""
        known = self._hashes.get(cert_id.hash_algorithm)
        if known is None:
            known = issuer_hashes(self.issuer_cert, cert_id.hash_algorithm)
            self._hashes[cert_id.hash_algorithm] = known
        return known == (cert_id.issuer_name_hash, cert_id.issuer_key_hash)

    def respond(
        self,
        request: OcspRequest,
        status: CertificateStatus,
        *,
        this_update: dt.datetime,
        next_update: dt.datetime | None,
    ) -> bytes:
        """Sign a successful response; see :func:`build_ocsp_response` for its content.

        Raises:
            ValidationError: ``ocsp.unauthorized`` when the request names another
                issuer; ``ocsp.responder_not_valid`` when the responder's certificate is
                outside its validity at ``this_update``; ``ocsp.bad_validity`` for naive
                or misordered times.
        """
        cert_id = request.cert_id
        if not self.serves(cert_id):
            raise ValidationError(
                "ocsp.unauthorized", "this responder does not serve the issuer in the request"
            )
        this_update, next_update = _validity(this_update, next_update)
        responder_cert = self.responder_cert
        if (
            not responder_cert.not_valid_before_utc
            <= this_update
            <= responder_cert.not_valid_after_utc
        ):
            raise ValidationError(
                "ocsp.responder_not_valid", "the responder certificate is not valid at thisUpdate"
            )
        revoked_at: dt.datetime | None = None
        reason: x509.ReasonFlags | None = None
        if status.state is ocsp.OCSPCertStatus.REVOKED and status.revoked_at is not None:
            revoked_at = _utc(status.revoked_at, "revoked_at")
            # Like a CRL entry (RFC 5280 §5.3.1), leave the optional revocationReason
            # out rather than state "unspecified".
            if status.reason is not RevocationReason.UNSPECIFIED and status.reason is not None:
                reason = status.reason.to_reason_flags()
        # No responder ID here: the signer names the responder by key hash (RFC 6960
        # §4.2.2.3), since a signer of a key in a token must set it itself.
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=cert_id.issuer_name_hash,
            issuer_key_hash=cert_id.issuer_key_hash,
            serial_number=cert_id.serial_number,
            algorithm=CERT_ID_HASHES[cert_id.hash_algorithm](),
            cert_status=status.state,
            this_update=this_update,
            next_update=next_update,
            revocation_time=revoked_at,
            revocation_reason=reason,
        )
        if responder_cert != self.issuer_cert:
            # RFC 6960 §4.2.2.2: a client must find the delegate's certificate, and
            # cryptography does not add it by itself.  The CA's own certificate is
            # left out: a client checking one of its certificates already has it.
            builder = builder.certificates([responder_cert])
        if request.nonce is not None:
            # RFC 6960 §4.4.1, RFC 8954 §2.1: echo the nonce, non-critical.
            builder = builder.add_extension(x509.OCSPNonce(request.nonce), critical=False)
        response = self.signer.sign_ocsp(builder, responder_cert)
        return response.public_bytes(serialization.Encoding.DER)


def _validity(
    this_update: dt.datetime, next_update: dt.datetime | None
) -> tuple[dt.datetime, dt.datetime | None]:
    this_update = _utc(this_update, "this_update")
    if next_update is not None:
        next_update = _utc(next_update, "next_update")
        if next_update <= this_update:
            raise ValidationError("ocsp.bad_validity", "nextUpdate must be later than thisUpdate")
    return this_update, next_update


def build_ocsp_error_response(status: ocsp.OCSPResponseStatus) -> bytes:
    """Build an unsuccessful OCSP response (RFC 6960 §4.2.1): a status, no body, unsigned.

    Args:
        status: malformedRequest, internalError, tryLater, sigRequired or unauthorized.

    Raises:
        ValidationError: ``ocsp.bad_status`` for ``SUCCESSFUL``, which needs a body.
    """
    if status is ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise ValidationError("ocsp.bad_status", "a successful response needs a signed body")
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


def response_status_for(error: FleetPKIError) -> ocsp.OCSPResponseStatus:
    """The unsuccessful OCSP status that answers ``error``.

    Malformed requests, bad nonces and unsupported CertID hashes get
    malformedRequest; a request for an issuer this responder does not serve gets
    unauthorized (RFC 5019 §2.2.3); anything else is internalError.
    """
    return _STATUS_BY_CODE.get(error.code, ocsp.OCSPResponseStatus.INTERNAL_ERROR)


def build_ocsp_signing_certificate(
    ca_cert: x509.Certificate,
    ca_signer: Signer,
    responder_public_key: PublicKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
    *,
    subject: x509.Name | None = None,
    serial_number: int | None = None,
) -> x509.Certificate:
    """Issue a delegated OCSP responder certificate (RFC 6960 §4.2.2.2).

    The certificate is an end-entity certificate issued directly by the CA, with
    the critical key usage digitalSignature, the extended key usage
    id-kp-OCSPSigning, and id-pkix-ocsp-nocheck (§4.2.2.2.1), which tells clients
    not to check its own revocation.  Since it cannot usefully be revoked, keep
    its lifetime short and renew it often.

    Args:
        ca_cert: the CA that delegates; responses will be for its certificates.
        ca_signer: the CA's key.
        responder_public_key: the responder's public key.
        not_before: start of validity, timezone-aware.
        not_after: end of validity, no later than the CA's.
        subject: the responder's name; by default the CA's, with
            ``OCSP Responder`` appended to its common name.
        serial_number: by default 159 random bits (RFC 5280 §4.1.2.2).

    Raises:
        ValidationError: ``ocsp.issuer_not_ca``, ``ocsp.signer_mismatch`` when
            ``ca_signer`` does not hold ``ca_cert``'s key, ``ocsp.bad_validity`` for
            naive or misordered times or a validity outside the CA's.
    """
    _require_ca(ca_cert)
    if _spki(ca_signer.public_key()) != _spki(ca_cert.public_key()):
        raise ValidationError("ocsp.signer_mismatch", "the signer's key is not the CA's key")
    not_before = _utc(not_before, "not_before")
    not_after = _utc(not_after, "not_after")
    if not_after <= not_before:
        raise ValidationError("ocsp.bad_validity", "not_after must be later than not_before")
    if not_before < ca_cert.not_valid_before_utc or not_after > ca_cert.not_valid_after_utc:
        raise ValidationError(
            "ocsp.bad_validity", "the responder certificate must lie within the CA's validity"
        )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject if subject is not None else _responder_name(ca_cert.subject))
        .issuer_name(ca_cert.subject)
        .public_key(responder_public_key)
        .serial_number(serial_number if serial_number is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        # RFC 6960 §4.2.2.2: the CA marks the delegate with id-kp-OCSPSigning.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        # RFC 6960 §4.2.2.2.1: id-pkix-ocsp-nocheck, non-critical, value NULL.
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(responder_public_key), critical=False
        )
        .add_extension(_authority_key_identifier(ca_cert, ca_signer), critical=False)
    )
    return ca_signer.sign_certificate(builder)


def _check_responder(
    issuer_cert: x509.Certificate, responder_cert: x509.Certificate, signer: Signer
) -> None:
    if _spki(signer.public_key()) != _spki(responder_cert.public_key()):
        raise ValidationError(
            "ocsp.signer_mismatch", "the signer's key is not the responder certificate's key"
        )
    if responder_cert == issuer_cert:
        return  # RFC 6960 §4.2.2.2: the CA that issued the certificate answers itself.
    # Otherwise a delegate: issued directly by the CA, with id-kp-OCSPSigning.
    try:
        responder_cert.verify_directly_issued_by(issuer_cert)
        usages = responder_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound) as exc:
        raise ValidationError(
            "ocsp.bad_responder", "the responder certificate was not issued by this CA"
        ) from exc
    if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        raise ValidationError(
            "ocsp.bad_responder", "the responder certificate lacks id-kp-OCSPSigning"
        )


def _require_ca(cert: x509.Certificate) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ValidationError("ocsp.issuer_not_ca", "only a CA can delegate OCSP signing")


def _responder_name(ca_subject: x509.Name) -> x509.Name:
    common_names = ca_subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    base = str(common_names[0].value) if common_names else "CA"
    suffix = " OCSP Responder"
    # RFC 5280 Appendix A: ub-common-name is 64 characters.
    common_name = base[: 64 - len(suffix)] + suffix
    kept = [attribute for attribute in ca_subject if attribute.oid != NameOID.COMMON_NAME]
    return x509.Name([*kept, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _authority_key_identifier(
    ca_cert: x509.Certificate, ca_signer: Signer
) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_signer.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _utc(value: dt.datetime, what: str) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError("ocsp.bad_validity", f"{what} must be a timezone-aware datetime")
    # Whole seconds in UTC: GeneralizedTime in OCSP carries no fractions here.
    return value.astimezone(dt.UTC).replace(microsecond=0)
