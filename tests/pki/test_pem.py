"""PEM text of DER (pki/pem.py) is what ``cryptography`` and OpenSSL write, byte for
byte, and what ``openssl x509`` reads back: the stored certificates are shown with it."""

from __future__ import annotations

import base64
import subprocess
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpki.pki.pem import pem_text
from support.testca import make_ca


def _certificate(common_name: str, kind: str = "p256") -> x509.Certificate:
    with tempfile.TemporaryDirectory() as folder:
        return make_ca(Path(folder), kind, common_name).cert


@settings(max_examples=30, deadline=None)
@given(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=64),
    st.sampled_from(["p256", "p256", "rsa"]),
)
def test_a_certificate_as_cryptography_writes_it(common_name: str, kind: str) -> None:
    certificate = _certificate(common_name, kind)
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
