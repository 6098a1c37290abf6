"""Finding stored certificates, and who may see or revoke them (shared by the use cases)."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.errors import NotFoundError, ValidationError
from fleetpki.services.ca_views import OWNER, CertificateView
from fleetpki.services.context import Actor
from fleetpki.services.ports import UnitOfWork
from fleetpki.store.models import CertificateRecord

__all__ = [
    "can_see",
    "certificate_by_serial",
    "certificate_by_thumbprint",
    "certificate_holder",
    "certificate_pem",
    "load_certificate_pem",
    "may_revoke",
    "visible_certificate",
]


def load_certificate_pem(data: bytes | str) -> x509.Certificate:
    """Parse one PEM (or DER) certificate, the first of a chain.

    Raises:
        ValidationError: ``certificate.malformed``.
    """
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificates(raw)[0]
        return x509.load_der_x509_certificate(raw)
    except (ValueError, IndexError) as exc:
        raise ValidationError("certificate.malformed", "not a PEM or DER certificate") from exc


def certificate_holder(cert: CertificateRecord | CertificateView) -> Actor:
    """The actor for a device that proved possession of ``cert``'s key."""
    return Actor(principal_id=f"certificate:{cert.sha1_hex}", source="certificate")


def certificate_pem(record: CertificateRecord) -> str:
    """A stored certificate as PEM text."""
    return (
        x509.load_der_x509_certificate(record.der).public_bytes(serialization.Encoding.PEM).decode()
    )


def certificate_by_serial(tx: UnitOfWork, serial: str) -> CertificateRecord:
    """A certificate by serial (hex, any case, optional colons or 0x; caller's unit).

    Raises:
        NotFoundError: ``certificate.not_found``.
    """
    cleaned = serial.strip().replace(":", "").upper().removeprefix("0X").lstrip("0") or "0"
    record = tx.certificates.find_by_serial(cleaned)
    if record is None:
        raise NotFoundError("certificate.not_found", f"no certificate with serial {serial}")
    return record


def certificate_by_thumbprint(tx: UnitOfWork, thumbprint: str) -> CertificateRecord:
    """A certificate by SHA-1 (40 hex) or SHA-256 (64 hex) thumbprint, any case (caller's unit).

    Raises:
        NotFoundError: ``certificate.not_found``.
    """
    value = thumbprint.strip().replace(":", "").upper()
    if len(value) == 64:
        record = tx.certificates.find_by_sha256(value)
    else:
        record = tx.certificates.find_by_sha1(value)
    if record is None:
        raise NotFoundError("certificate.not_found", f"no certificate with thumbprint {thumbprint}")
    return record


def can_see(tx: UnitOfWork, actor: Actor, record: CertificateRecord) -> bool:
    """Admins, the requester, the holder and members of the certificate's domain (caller's unit)."""
    if actor.is_admin or actor.principal_id in {
        record.requested_by,
        certificate_holder(record).principal_id,
    }:
        return True
    if record.domain_id is None:
        return False
    return tx.domains.has_member(record.domain_id, actor.principal_id)


def visible_certificate(tx: UnitOfWork, actor: Actor, record: CertificateRecord) -> None:
    """Check that the actor may see ``record`` (caller's unit).

    Raises:
        NotFoundError: ``certificate.not_found``, so that strangers cannot probe
        which serials exist.
    """
    if not can_see(tx, actor, record):
        raise NotFoundError("certificate.not_found", f"no certificate {record.serial_hex}")


def may_revoke(tx: UnitOfWork, actor: Actor, record: CertificateRecord) -> bool:
    """Whether :func:`revoke_in` would let the actor revoke ``record`` (caller's unit).

    Admins, the holder, and owners of the certificate's domain.
    """
    if actor.is_admin or actor.principal_id == certificate_holder(record).principal_id:
        return True
    if record.domain_id is None:
        return False
    return tx.domains.has_member(record.domain_id, actor.principal_id, OWNER)
