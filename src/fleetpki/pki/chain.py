"""Chain verification for device (client) certificates, through ``cryptography.x509.verification``.

The Web PKI profile that cryptography's client verifier applies requires a SAN
in every leaf.  IoT device certificates name the device in the subject CN (Azure
IoT Hub authenticates on the CN) and a GUID device id is no DNS name, so the
end-entity policy here lets the SAN be absent; everything else (signatures,
validity, basic constraints, key usage, EKU clientAuth, path length) is the
library's standard RFC 5280 path validation, never hand-written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from fleetpki.errors import AuthenticationError

__all__ = ["is_self_signed", "issued_by", "verify_client_chain"]

_MAX_DEPTH = 4


def _ee_policy() -> ExtensionPolicy:
    return ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )


def _key_identifier(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    if isinstance(value, x509.SubjectKeyIdentifier):
        return value.digest
    if isinstance(value, x509.AuthorityKeyIdentifier):
        return value.key_identifier
    return None


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` names and keys ``cert``'s issuer: the names match and, when both
    carry key identifiers, ``cert``'s authority key identifier is ``issuer``'s subject key
    identifier (RFC 5280 §4.2.1.1). Two certificates of one CA name with different keys,
    as in a root rollover, are told apart this way; the signature is not checked.
    """
    if cert.issuer != issuer.subject:
        return False
    authority = _key_identifier(cert, x509.AuthorityKeyIdentifier)
    subject = _key_identifier(issuer, x509.SubjectKeyIdentifier)
    return authority is None or subject is None or authority == subject


def is_self_signed(cert: x509.Certificate) -> bool:
    """Whether ``cert`` is signed by its own key (a root), not merely self-issued.

    A rollover's link certificates have the same subject and issuer name but are
    signed by the CA's other key: they are intermediates, not trust anchors.
    """
    if not issued_by(cert, cert):
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_client_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trust_anchors: Sequence[x509.Certificate],
    *,
    now: dt.datetime,
) -> list[x509.Certificate]:
    """Validate ``leaf`` as a TLS client certificate up to one of ``trust_anchors``.

    Returns the verified chain, leaf first and trust anchor last.

    Raises:
        AuthenticationError: ``certificate.untrusted`` when no valid path exists
        (the library's reason is kept as the cause, not shown to the caller).
    """
    if not trust_anchors:
        raise AuthenticationError("certificate.untrusted", "no trusted CA for this certificate")
    verifier = (
        PolicyBuilder()
        .store(Store(list(trust_anchors)))
        .time(now)
        .max_chain_depth(_MAX_DEPTH)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ee_policy())
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, list(intermediates))
    except VerificationError as exc:
        raise AuthenticationError(
            "certificate.untrusted", "the certificate does not chain to a trusted CA"
        ) from exc
    return list(verified.chain)
