"""Hub trust: CA certificates uploaded, proven by possession (ref §4.1), and cached as anchors.

Azure's flow, kept step by step: upload a CA (it starts unverified), generate a
verification code, present a certificate whose subject CN is the code and which the
CA's key signed, and the CA becomes verified. Only verified CAs authenticate devices
(ref §4.1, §4.2). :func:`trust_local_ca` runs all the steps with a local CA's key.

The MQTT server authenticates on every connect, so it reads the anchors through a
:class:`TrustCache` that its application owns, re-checked against a stamp of the
``hub_cas`` table on every read so that a change made by another process (the CLI)
applies to the next connection without a restart.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetpki.errors import ConflictError, NotFoundError, ValidationError
from fleetpki.keystore import KeyStore
from fleetpki.pki.issuance import thumbprints
from fleetpki.pki.keys import KeySpec, generate_key
from fleetpki.services.authority import get_ca
from fleetpki.services.events import notify_after_commit
from fleetpki.services.notifications import TrustChanged
from fleetpki.store.hub_models import HubCA

__all__ = [
    "TrustAnchor",
    "TrustAnchors",
    "TrustCache",
    "check_if_match",
    "delete_hub_ca",
    "generate_verification_code",
    "get_hub_ca",
    "list_hub_cas",
    "new_etag",
    "trust_anchors",
    "trust_local_ca",
    "upload_hub_ca",
    "verify_hub_ca",
]


def new_etag() -> str:
    """A fresh opaque etag (ref §3.3: opaque strings the SDK echoes back)."""
    return secrets.token_urlsafe(9)


def check_if_match(if_match: str | None, etag: str) -> None:
    """Apply ``If-Match`` (ref §3.3): quotes stripped, ``*`` matches anything.

    Raises:
        ConflictError: ``precondition.failed`` (HTTP 412) on a mismatch.
    """
    if if_match is None:
        return
    value = if_match.strip().removeprefix("W/")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if value in ("*", etag):
        return
    raise ConflictError("precondition.failed", "the If-Match etag does not match")


def _parse_certificate(data: bytes | str) -> x509.Certificate:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise ValidationError("certificate.malformed", "not a PEM or DER certificate") from exc


def get_hub_ca(session: Session, name: str) -> HubCA:
    """The hub CA called ``name``.

    Raises:
        NotFoundError: ``hub.ca_not_found``.
    """
    record = session.scalar(select(HubCA).where(HubCA.name == name))
    if record is None:
        raise NotFoundError("hub.ca_not_found", f"no hub CA named {name!r}")
    return record


def list_hub_cas(session: Session) -> list[HubCA]:
    """Every hub CA, by name."""
    return list(session.scalars(select(HubCA).order_by(HubCA.name)))


def _changed(session: Session) -> None:
    notify_after_commit(session, TrustChanged())


def upload_hub_ca(
    session: Session,
    name: str,
    certificate: bytes | str,
    *,
    now: dt.datetime,
    fleetpki_ca_id: str | None = None,
    verified: bool = False,
) -> HubCA:
    """Upload a CA certificate; it starts unverified unless ``verified`` (ref §4.1).

    Raises:
        ValidationError: ``certificate.malformed``, ``hub.not_a_ca``.
        ConflictError: ``hub.ca_exists`` when the name is taken.
    """
    cert = _parse_certificate(certificate)
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ValidationError("hub.not_a_ca", "the certificate is not a CA certificate")
    if session.scalar(select(HubCA.id).where(HubCA.name == name)) is not None:
        raise ConflictError("hub.ca_exists", f"a hub CA named {name!r} exists")
    der = cert.public_bytes(serialization.Encoding.DER)
    sha1, sha256 = thumbprints(der)
    record = HubCA(
        id=str(uuid.uuid4()),
        name=name,
        certificate_der=der,
        sha1_hex=sha1,
        sha256_hex=sha256,
        subject=cert.subject.rfc4514_string(),
        not_after=cert.not_valid_after_utc,
        is_verified=verified,
        verification_code=None,
        etag=new_etag(),
        created_at=now,
        updated_at=now,
        fleetpki_ca_id=fleetpki_ca_id,
    )
    session.add(record)
    session.flush()
    _changed(session)
    return record


def generate_verification_code(
    session: Session, name: str, *, now: dt.datetime, if_match: str | None = None
) -> HubCA:
    """Give the CA a new verification code (40 hex characters, ref §4.1) and a new etag.

    Raises:
        NotFoundError: ``hub.ca_not_found``.
        ConflictError: ``precondition.failed``.
    """
    record = get_hub_ca(session, name)
    check_if_match(if_match, record.etag)
    record.verification_code = secrets.token_hex(20).upper()
    record.etag = new_etag()
    record.updated_at = now
    return record


def _common_name(cert: x509.Certificate) -> str | None:
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode()


def verify_hub_ca(
    session: Session,
    name: str,
    verification_certificate: bytes | str,
    *,
    now: dt.datetime,
    if_match: str | None = None,
) -> HubCA:
    """Check proof of possession and mark the CA verified (ref §4.1 steps 3-4).

    The verification certificate's subject CN must equal the current code, and its
    signature must check with the uploaded CA's public key.

    Raises:
        NotFoundError: ``hub.ca_not_found``.
        ConflictError: ``precondition.failed``; ``hub.no_verification_code`` before a
            code was generated.
        ValidationError: ``certificate.malformed``, ``hub.verification_cn_mismatch``,
            ``hub.verification_bad_signature``.
    """
    record = get_hub_ca(session, name)
    check_if_match(if_match, record.etag)
    if not record.verification_code:
        raise ConflictError(
            "hub.no_verification_code", "generate a verification code for this CA first"
        )
    proof = _parse_certificate(verification_certificate)
    if (_common_name(proof) or "").upper() != record.verification_code.upper():
        raise ValidationError(
            "hub.verification_cn_mismatch",
            "the verification certificate's CN is not the verification code",
        )
    ca_cert = x509.load_der_x509_certificate(record.certificate_der)
    try:
        proof.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ValidationError(
            "hub.verification_bad_signature",
            "the verification certificate was not signed by this CA's key",
        ) from exc
    record.is_verified = True
    record.verification_code = None
    record.etag = new_etag()
    record.updated_at = now
    _changed(session)
    return record


def delete_hub_ca(session: Session, name: str, *, if_match: str | None = None) -> None:
    """Remove a hub CA; devices chaining only to it are refused from the next connect.

    Raises:
        NotFoundError: ``hub.ca_not_found``.
        ConflictError: ``precondition.failed``.
    """
    record = get_hub_ca(session, name)
    check_if_match(if_match, record.etag)
    session.delete(record)
    session.flush()
    _changed(session)


def trust_local_ca(session: Session, keystore: KeyStore, ca_id: str, *, now: dt.datetime) -> HubCA:
    """Trust a fleetpki CA in the hub through the whole proof-of-possession flow.

    Uploads the CA certificate (named after the CA), generates a code, signs a
    verification certificate for it with the CA's key from ``keystore`` and verifies
    it. Running it again for a verified CA changes nothing.

    Raises:
        NotFoundError: ``ca.not_found``.
        ConflictError: ``hub.ca_exists`` when another certificate holds the CA's name.
    """
    ca = get_ca(session, ca_id)
    existing = session.scalar(select(HubCA).where(HubCA.sha1_hex == ca.sha1_hex))
    if existing is not None and existing.is_verified:
        return existing
    record = existing or upload_hub_ca(
        session, ca.name, ca.certificate_der, now=now, fleetpki_ca_id=ca.id
    )
    record = generate_verification_code(session, record.name, now=now)
    assert record.verification_code is not None
    ca_cert = x509.load_der_x509_certificate(ca.certificate_der)
    proof_key = generate_key(KeySpec.EC_P256)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, record.verification_code)])
        )
        .issuer_name(ca_cert.subject)
        .public_key(proof_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    proof = keystore.signer(ca.key_ref).sign_certificate(builder)
    return verify_hub_ca(
        session, record.name, proof.public_bytes(serialization.Encoding.PEM), now=now
    )


# --------------------------------------------------------------------------- anchor cache


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """A hub CA as the authenticator uses it."""

    name: str
    certificate: x509.Certificate
    sha1_hex: str
    fleetpki_ca_id: str | None


@dataclass(frozen=True, slots=True)
class TrustAnchors:
    """The hub CAs split by state: only ``verified`` ones authenticate devices."""

    verified: Sequence[TrustAnchor]
    unverified: Sequence[TrustAnchor]


def trust_anchors(session: Session) -> TrustAnchors:
    """The hub's anchors, read and parsed from ``hub_cas`` now (`TrustCache` keeps them)."""
    verified: list[TrustAnchor] = []
    unverified: list[TrustAnchor] = []
    for record in session.scalars(select(HubCA).order_by(HubCA.name)):
        anchor = TrustAnchor(
            name=record.name,
            certificate=x509.load_der_x509_certificate(record.certificate_der),
            sha1_hex=record.sha1_hex,
            fleetpki_ca_id=record.fleetpki_ca_id,
        )
        (verified if record.is_verified else unverified).append(anchor)
    return TrustAnchors(tuple(verified), tuple(unverified))


class TrustCache:
    """The parsed anchors of one database, reused while ``hub_cas`` is unchanged.

    The MQTT server authenticates on every connect; parsing every CA certificate each
    time would dominate. Each read checks a stamp (every hub CA's id, etag and
    verified flag: every trust change gives a new etag or adds or removes a row), so
    a CA verified or deleted here or in another process (the CLI) applies to the next
    connection without a restart, and a frozen test clock cannot hide a change.
    Owned by the application that uses it; thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: tuple[object, TrustAnchors] | None = None

    def anchors(self, session: Session) -> TrustAnchors:
        """The hub's anchors as of ``session``'s transaction."""
        rows = session.execute(
            select(HubCA.id, HubCA.etag, HubCA.is_verified).order_by(HubCA.id)
        ).all()
        stamp = tuple(tuple(row) for row in rows)
        with self._lock:
            entry = self._entry
        if entry is not None and entry[0] == stamp:
            return entry[1]
        anchors = trust_anchors(session)
        with self._lock:
            self._entry = (stamp, anchors)
        return anchors

    def clear(self) -> None:
        """Forget the cached anchors (the next read parses them again)."""
        with self._lock:
            self._entry = None
