"""Views to answer shapes: what the EZCA and /v1 routes show of CAs, domains and certificates."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.pki.names import SanType
from fleetpki.pki.profile import KeyUsageName
from fleetpki.services.ca_views import CertificateView

__all__ = [
    "ca_hashing",
    "ca_key_type",
    "certificate_ekus",
    "certificate_key_usages",
    "iso",
    "pem_of",
    "san_entries",
]

_KEY_TYPES = {
    "rsa-2048": "RSA 2048",
    "rsa-3072": "RSA 3072",
    "rsa-4096": "RSA 4096",
    "ec-p256": "ECDSA P256",
    "ec-p384": "ECDSA P384",
}


def ca_key_type(key_spec: str) -> str:
    """EZCA's ``CAKeyType`` text for a CA's key spec."""
    return _KEY_TYPES.get(key_spec, key_spec)


def ca_hashing(key_spec: str) -> str:
    """EZCA's ``CAHashing``: the signature hash of a CA with this key spec."""
    return "SHA384" if key_spec == "ec-p384" else "SHA256"


def iso(value: dt.datetime) -> str:
    """An ISO 8601 UTC time with a ``Z``, as .NET and Go parse it."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pem_of(certificate: x509.Certificate) -> str:
    """A certificate as PEM text."""
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def san_entries(record: CertificateView) -> list[tuple[int, str]]:
    """The certificate's SANs as (GeneralName tag, value) pairs."""
    entries = []
    for text in record.sans:
        kind, _, value = text.partition(":")
        try:
            entries.append((int(SanType[kind]), value))
        except KeyError:
            continue
    return entries


def certificate_key_usages(certificate: x509.Certificate) -> list[str]:
    """The key usage names (EZCA spelling) a certificate carries."""
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return []
    flags = {
        KeyUsageName.DIGITAL_SIGNATURE: usage.digital_signature,
        KeyUsageName.NON_REPUDIATION: usage.content_commitment,
        KeyUsageName.KEY_ENCIPHERMENT: usage.key_encipherment,
        KeyUsageName.DATA_ENCIPHERMENT: usage.data_encipherment,
        KeyUsageName.KEY_AGREEMENT: usage.key_agreement,
    }
    return [name.value for name, present in flags.items() if present]


def certificate_ekus(certificate: x509.Certificate) -> list[str]:
    """The extended key usage OIDs a certificate carries."""
    try:
        ekus = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return []
    return [oid.dotted_string for oid in ekus]
