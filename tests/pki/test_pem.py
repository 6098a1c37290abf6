"""PEM text of DER (pki/pem.py) is what ``cryptography`` and OpenSSL write, byte for
byte, and what ``openssl x509`` reads back: the stored certificates are shown with it."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpki.pki.pem import pem_text


def _certificate(common_name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=64))
def test_a_certificate_as_cryptography_writes_it(common_name: str) -> None:
    certificate = _certificate(common_name)
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert pem_text(der) == certificate.public_bytes(serialization.Encoding.PEM).decode()


@given(st.binary(max_size=400))
def test_lines_of_64_between_the_labels_and_back(der: bytes) -> None:
    text = pem_text(der, "ENCRYPTED PRIVATE KEY")
    lines = text.split("\n")
    assert lines[0] == "-----BEGIN ENCRYPTED PRIVATE KEY-----"
    assert lines[-2:] == ["-----END ENCRYPTED PRIVATE KEY-----", ""]
    body = lines[1:-2]
    assert all(len(line) == 64 for line in body[:-1])
    assert not body or 0 < len(body[-1]) <= 64
    assert base64.b64decode("".join(body)) == der


def test_openssl_reads_it() -> None:
    certificate = _certificate("device-1")
    text = pem_text(certificate.public_bytes(serialization.Encoding.DER))
    shown = subprocess.run(
        ["openssl", "x509", "-noout", "-subject"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "device-1" in shown.stdout
