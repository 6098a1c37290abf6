"""The proof-of-possession certificate: the CA's key signs CN=<code>, a clean end entity."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fleetpki.errors import ValidationError
from fleetpki.pki.proof import VERIFICATION_VALIDITY, verification_certificate_builder
from support.openssl import verify
from support.pkilint import assert_lints_clean
from support.testca import NOW, make_ca

CODE = "0123456789ABCDEF0123456789ABCDEF01234567"


@pytest.mark.parametrize("kind", ["p256", "rsa"])
def test_the_verification_certificate_is_signed_by_the_ca_and_lints_clean(
    tmp_path: Path, kind: str
) -> None:
    ca = make_ca(tmp_path, kind)
    proof = ca.signer.sign_certificate(verification_certificate_builder(CODE, ca.cert, now=NOW))

    assert proof.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CODE
    assert proof.issuer == ca.cert.subject
    proof.verify_directly_issued_by(ca.cert)
    constraints = proof.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (constraints.critical, constraints.value.ca) == (True, False)
    usage = proof.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    aki = proof.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert proof.not_valid_after_utc - NOW == VERIFICATION_VALIDITY
    assert proof.not_valid_before_utc < NOW
    der = proof.public_bytes(serialization.Encoding.DER)
    assert_lints_clean("certificate", der, include_warnings=True)
    leaf = tmp_path / "proof.pem"
    leaf.write_bytes(proof.public_bytes(serialization.Encoding.PEM))
    result = verify(leaf, ca.pem)
    assert result.ok, result.output


@pytest.mark.parametrize("code", ["", "x" * 65, "line\nbreak", "c\u00f6de"])
def test_a_code_that_is_not_a_short_ascii_token_is_refused(tmp_path: Path, code: str) -> None:
    ca = make_ca(tmp_path, "p256")
    with pytest.raises(ValidationError) as info:
        verification_certificate_builder(code, ca.cert, now=NOW)
    assert info.value.code == "hub.bad_verification_code"
