"""Device keys and CSRs: CN and DNS SAN equal to the device id, SHA-256, checked by openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from fleetpki.device import (
    DEVICE_KEY_SPECS,
    check_device_id,
    generate_device_key,
    make_csr,
    make_csr_pem,
)
from fleetpki.errors import ValidationError
from fleetpki.pki.keys import KeySpec, generate_key

DEVICE_ID = "3f2c9a8e-5b1d-4c7e-9a0f-1e2d3c4b5a69"


@pytest.mark.parametrize(
    ("spec", "openssl_key_text"),
    [
        (KeySpec.RSA_2048, "Public-Key: (2048 bit)"),
        (KeySpec.RSA_3072, "Public-Key: (3072 bit)"),
        (KeySpec.RSA_4096, "Public-Key: (4096 bit)"),
        (KeySpec.EC_P256, "NIST CURVE: P-256"),
        (KeySpec.EC_P384, "NIST CURVE: P-384"),
    ],
)
def test_csr_verifies_with_openssl(spec: KeySpec, openssl_key_text: str, tmp_path: Path) -> None:
    key = generate_device_key(spec)
    path = tmp_path / "device.csr"
    path.write_text(make_csr_pem(DEVICE_ID, key))
    result = subprocess.run(
        ["openssl", "req", "-in", str(path), "-noout", "-verify", "-text"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "verify OK" in out or "Certificate request self-signature verify OK" in out
    assert f"Subject: CN = {DEVICE_ID}" in out
    assert f"DNS:{DEVICE_ID}" in out
    assert openssl_key_text in out
    expected_signature = "sha256WithRSAEncryption" if spec.is_rsa else "ecdsa-with-SHA256"
    assert f"Signature Algorithm: {expected_signature}" in out


@pytest.mark.parametrize("spec", sorted(DEVICE_KEY_SPECS, key=lambda s: s.value))
def test_csr_contents(spec: KeySpec) -> None:
    key = generate_device_key(spec)
    csr = make_csr(DEVICE_ID, key)
    assert csr.is_signature_valid
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEVICE_ID
    assert len(csr.subject) == 1
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [x509.DNSName(DEVICE_ID)]
    if spec.is_rsa:
        assert isinstance(key, rsa.RSAPrivateKey)
        assert key.public_key().public_numbers().e == 65537
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)


def test_default_key_is_p256() -> None:
    key = generate_device_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


def test_ed25519_is_no_device_key() -> None:
    with pytest.raises(ValidationError) as caught:
        generate_device_key(KeySpec.ED25519)
    assert caught.value.code == "device.bad_key_type"
    with pytest.raises(ValidationError) as caught:
        make_csr(DEVICE_ID, generate_key(KeySpec.ED25519))
    assert caught.value.code == "device.bad_key_type"


@pytest.mark.parametrize("device_id", ["", "a" * 129, "dev/1", "dev 1", "dév", "dev\n1", "dev:1"])
def test_bad_device_ids(device_id: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_device_id(device_id)
    assert caught.value.code == "device.bad_id"


@pytest.mark.parametrize("device_id", ["a", "a" * 128, "dev-1.b+c%_#*?!(),=@$'", DEVICE_ID])
def test_good_device_ids(device_id: str) -> None:
    assert check_device_id(device_id) == device_id


@given(st.text(max_size=140))
def test_device_id_check_never_crashes(text: str) -> None:
    try:
        assert check_device_id(text) == text
    except ValidationError as exc:
        assert exc.code == "device.bad_id"
