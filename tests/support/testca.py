"""A tiny CA made with cryptography alone, for tests of the PKI builders and the linters."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetpki.keystore.files import FileSigner
from fleetpki.pki.extensions import crl_distribution_points, key_usage

__all__ = ["HOUR", "NOW", "MiniCA", "issue_leaf", "key_usage", "make_ca", "new_key"]

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
HOUR = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class MiniCA:
    """A self-signed CA, its signer and its PEM file."""

    cert: x509.Certificate
    signer: FileSigner
    pem: Path


def new_key(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """An EC P-256 key for ``p256``, else RSA-2048."""
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_ca(
    directory: Path,
    kind: str,
    common_name: str = "fleetpki Test CA",
    *,
    path_length: int | None = 0,
    usage: x509.KeyUsage | None = None,
) -> MiniCA:
    """A self-signed CA valid from a day ago for 30 days, written to ``directory``."""
    key = new_key(kind)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 24 * HOUR)
        .not_valid_after(NOW + 30 * 24 * HOUR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            usage or key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    signer = FileSigner(f"memory:{kind}", key)
    cert = signer.sign_certificate(builder)
    pem = directory / f"ca-{kind}-{cert.serial_number:x}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return MiniCA(cert, signer, pem)


def issue_leaf(
    ca: MiniCA,
    directory: Path,
    *,
    eku: x509.ObjectIdentifier | None = None,
    crl_url: str | None = None,
) -> Path:
    """An EC P-256 client certificate ``CN=device-0001`` from ``ca``, written to ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-0001")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + 24 * HOUR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([eku or ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if crl_url is not None:
        builder = builder.add_extension(crl_distribution_points(crl_url), critical=False)
    cert = ca.signer.sign_certificate(builder)
    path = directory / f"leaf-{cert.serial_number:x}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path
