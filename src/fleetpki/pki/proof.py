"""The proof-of-possession (verification) certificate of Azure's CA verification flow.

A hub that is handed a CA certificate asks for proof that the uploader holds the CA's
key: it issues a verification code, and the uploader answers with a certificate whose
subject CN is that code, signed by the CA's key (ref §4.1). The certificate proves one
thing only, so it is a minimal, short-lived end-entity certificate: a fresh key of its
own (never used again), the CA as issuer with AKI/SKI, ``basicConstraints`` CA:false
and ``keyUsage`` digitalSignature (RFC 5280 §4.2.1.9, §4.2.1.3).

Nothing here signs: :func:`verification_certificate_builder` returns the builder, and
the caller hands it to the keystore's signer, so the CA key never leaves custody.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.x509.oid import NameOID

from fleetpki.errors import ValidationError
from fleetpki.pki.extensions import key_usage
from fleetpki.pki.keys import KeySpec, generate_key

__all__ = ["VERIFICATION_BACKDATE", "VERIFICATION_VALIDITY", "verification_certificate_builder"]

#: How long a verification certificate is valid: it is presented once, at once.
VERIFICATION_VALIDITY = dt.timedelta(hours=1)
#: It starts this long before "now", so a hub whose clock runs behind accepts it.
VERIFICATION_BACKDATE = dt.timedelta(minutes=5)
# A verification code is 40 hex characters from Azure and fleetpki; allow any short
# printable token a hub may choose, but never something that is not a plain CN.
_MAX_CODE = 64


def _ski_of(certificate: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())


def verification_certificate_builder(
    code: str,
    ca_certificate: x509.Certificate,
    *,
    now: dt.datetime,
    validity: dt.timedelta = VERIFICATION_VALIDITY,
) -> x509.CertificateBuilder:
    """The unsigned verification certificate for ``code``, to be signed by the CA's key.

    Args:
        code: the verification code the hub issued; it becomes the subject CN.
        ca_certificate: the CA whose key will sign (its subject is the issuer, its
            subject key identifier the AKI).
        now: the current time.
        validity: how long the certificate is valid after ``now``.

    Raises:
        ValidationError: ``hub.bad_verification_code`` for an empty, overlong or
            non-printable code.
    """
    if not code or len(code) > _MAX_CODE or not code.isascii() or not code.isprintable():
        raise ValidationError(
            "hub.bad_verification_code", "the hub's verification code is not a short ASCII token"
        )
    public_key = generate_key(KeySpec.EC_P256).public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)]))
        .issuer_name(ca_certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - VERIFICATION_BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski_of(ca_certificate)),
            critical=False,
        )
    )
