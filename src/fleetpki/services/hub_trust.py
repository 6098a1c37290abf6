"""Hub trust: CA certificates uploaded, proven by possession (ref §4.1), and cached as anchors.

Azure's flow, kept step by step: upload a CA (it starts unverified), generate a
verification code, present a certificate whose subject CN is the code and which the
CA's key signed, and the CA becomes verified. Only verified CAs authenticate devices
(ref §4.1, §4.2). :meth:`HubTrustService.trust_local_ca` runs all the steps with a
local CA's key.

The MQTT server authenticates on every connect, so device authentication reads the
anchors through :meth:`HubTrustService.trust_anchors` inside its own unit of work:
a :class:`TrustCache` that the application owns keeps them parsed, checked against a
stamp of the ``hub_cas`` table on every read, so that a change made by another
process (the CLI) applies to the next connection without a restart.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fleetpki.errors import ConflictError, NotFoundError, ValidationError
from fleetpki.keystore import KeyStore
from fleetpki.pki.issuance import thumbprints
from fleetpki.pki.proof import verification_certificate_builder
from fleetpki.services.context import Clock
from fleetpki.services.hub_etags import check_if_match, new_etag
from fleetpki.services.notifications import TrustChanged
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.store.hub_models import HubCA

__all__ = [
    "HubCAView",
    "HubTrustService",
    "TrustAnchor",
    "TrustAnchors",
    "TrustCache",
    "check_if_match",
    "hub_ca_view",
    "new_etag",
    "possession_proof",
    "proof_signer",
]


@dataclass(frozen=True, slots=True)
class HubCAView:
    """A hub CA as the APIs present it (Azure's certificate description, ref §4.1)."""

    id: str
    name: str
    certificate_der: bytes
    sha1_hex: str
    sha256_hex: str
    subject: str
    not_after: dt.datetime
    is_verified: bool
    verification_code: str | None
    etag: str
    created_at: dt.datetime
    updated_at: dt.datetime
    fleetpki_ca_id: str | None


def hub_ca_view(record: HubCA) -> HubCAView:
    """The view of a hub CA (call inside the unit of work that read it)."""
    return HubCAView(
        id=record.id,
        name=record.name,
        certificate_der=record.certificate_der,
        sha1_hex=record.sha1_hex,
        sha256_hex=record.sha256_hex,
        subject=record.subject,
        not_after=record.not_after,
        is_verified=record.is_verified,
        verification_code=record.verification_code,
        etag=record.etag,
        created_at=record.created_at,
        updated_at=record.updated_at,
        fleetpki_ca_id=record.fleetpki_ca_id,
    )


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


def _read_anchors(tx: UnitOfWork) -> TrustAnchors:
    verified: list[TrustAnchor] = []
    unverified: list[TrustAnchor] = []
    for record in tx.hub_cas.list():
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

    Parsing every CA certificate on each connect would dominate authentication. Each
    read checks the repository's stamp (every hub CA's id, etag and verified flag: a
    trust change always gives a new etag or adds or removes a row), so a CA verified
    or deleted here or in another process applies to the next read, with no
    invalidation call and no dependence on clocks. Owned by one application; thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: tuple[Hashable, TrustAnchors] | None = None

    def anchors(self, tx: UnitOfWork) -> TrustAnchors:
        """The hub's anchors as of ``tx``'s transaction."""
        stamp = tx.hub_cas.stamp()
        with self._lock:
            entry = self._entry
        if entry is not None and entry[0] == stamp:
            return entry[1]
        anchors = _read_anchors(tx)
        with self._lock:
            self._entry = (stamp, anchors)
        return anchors

    def clear(self) -> None:
        """Forget the cached anchors (the next read parses them again)."""
        with self._lock:
            self._entry = None


def _parse_certificate(data: bytes | str) -> x509.Certificate:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise ValidationError("certificate.malformed", "not a PEM or DER certificate") from exc


def _common_name(cert: x509.Certificate) -> str | None:
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode()


def require_hub_ca(tx: UnitOfWork, name: str) -> HubCA:
    """The hub CA called ``name`` in the caller's unit of work.

    Raises:
        NotFoundError: ``hub.ca_not_found``.
    """
    record = tx.hub_cas.get_by_name(name)
    if record is None:
        raise NotFoundError("hub.ca_not_found", f"no hub CA named {name!r}")
    return record


def upload_in(
    tx: UnitOfWork,
    name: str,
    certificate: bytes | str,
    *,
    now: dt.datetime,
    fleetpki_ca_id: str | None = None,
    verified: bool = False,
) -> HubCA:
    """:meth:`HubTrustService.upload` inside the caller's unit of work (returns the record)."""
    cert = _parse_certificate(certificate)
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ValidationError("hub.not_a_ca", "the certificate is not a CA certificate")
    if tx.hub_cas.get_by_name(name) is not None:
        raise ConflictError("hub.ca_exists", f"a hub CA named {name!r} exists")
    der = cert.public_bytes(serialization.Encoding.DER)
    sha1, sha256 = thumbprints(der)
    if fleetpki_ca_id is None:
        # A CA this fleetpki runs, however it was uploaded (the CLI, a hub link, Azure's
        # management API), is checked against fleetpki's own certificate table.
        fleetpki_ca_id = tx.cas.id_by_sha1(sha1)
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
    tx.hub_cas.add(record)
    tx.publish(TrustChanged())
    return record


def verification_code_in(
    tx: UnitOfWork, name: str, *, now: dt.datetime, if_match: str | None = None
) -> HubCA:
    """:meth:`HubTrustService.generate_verification_code` inside the caller's unit of work."""
    record = require_hub_ca(tx, name)
    check_if_match(if_match, record.etag)
    record.verification_code = secrets.token_hex(20).upper()
    record.etag = new_etag()
    record.updated_at = now
    return record


def verify_in(
    tx: UnitOfWork,
    name: str,
    verification_certificate: bytes | str,
    *,
    now: dt.datetime,
    if_match: str | None = None,
) -> HubCA:
    """:meth:`HubTrustService.verify` inside the caller's unit of work (returns the record)."""
    record = require_hub_ca(tx, name)
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
    tx.publish(TrustChanged())
    return record


def delete_in(tx: UnitOfWork, name: str, *, if_match: str | None = None) -> None:
    """:meth:`HubTrustService.delete` inside the caller's unit of work."""
    record = require_hub_ca(tx, name)
    check_if_match(if_match, record.etag)
    tx.hub_cas.delete(record)
    tx.publish(TrustChanged())


def possession_proof(
    keystore: KeyStore,
    key_ref: str,
    ca_certificate: x509.Certificate,
    code: str,
    *,
    now: dt.datetime,
) -> x509.Certificate:
    """The verification certificate for ``code`` (CN = the code), signed by the CA's key
    through the keystore's signer (ref §4.1 step 3): the one way fleetpki proves possession.
    """
    builder = verification_certificate_builder(code, ca_certificate, now=now)
    return keystore.signer(key_ref).sign_certificate(builder)


def proof_signer(
    keystore: KeyStore, key_ref: str, ca_certificate: x509.Certificate, clock: Clock
) -> Callable[[str], bytes]:
    """A connector's proof signer (code in, DER verification certificate out) for a CA."""

    def prove(code: str) -> bytes:
        proof = possession_proof(keystore, key_ref, ca_certificate, code, now=clock())
        return proof.public_bytes(serialization.Encoding.DER)

    return prove


def trust_local_ca_in(tx: UnitOfWork, keystore: KeyStore, ca_id: str, *, now: dt.datetime) -> HubCA:
    """:meth:`HubTrustService.trust_local_ca` inside the caller's unit of work."""
    try:
        key = str(uuid.UUID(str(ca_id)))
    except ValueError:
        raise NotFoundError("ca.not_found", f"no ca {ca_id!r} (not a GUID)") from None
    ca = tx.hub_cas.local_ca(key)
    if ca is None:
        raise NotFoundError("ca.not_found", f"no CA {ca_id}")
    existing = tx.hub_cas.find_by_sha1(ca.sha1_hex)
    if existing is not None and existing.is_verified:
        return existing
    record = existing or upload_in(tx, ca.name, ca.certificate_der, now=now, fleetpki_ca_id=ca.id)
    record = verification_code_in(tx, record.name, now=now)
    assert record.verification_code is not None
    certificate = x509.load_der_x509_certificate(ca.certificate_der)
    proof = possession_proof(keystore, ca.key_ref, certificate, record.verification_code, now=now)
    return verify_in(tx, record.name, proof.public_bytes(serialization.Encoding.PEM), now=now)


class HubTrustService:
    """The hub's trusted CAs: Azure's proof-of-possession flow (ref §4.1) and the anchors.

    Args:
        store: the database.
        keystore: custody of the local CAs' keys (for :meth:`trust_local_ca`).
        clock: the source of "now".
        cache: this application's cache of parsed anchors.
    """

    def __init__(self, store: Store, keystore: KeyStore, clock: Clock, cache: TrustCache) -> None:
        self._store = store
        self._keystore = keystore
        self._clock = clock
        self.cache = cache

    def upload(
        self,
        name: str,
        certificate: bytes | str,
        *,
        fleetpki_ca_id: str | None = None,
        verified: bool = False,
    ) -> HubCAView:
        """Upload a CA certificate; it starts unverified unless ``verified`` (ref §4.1).

        Raises:
            ValidationError: ``certificate.malformed``, ``hub.not_a_ca``.
            ConflictError: ``hub.ca_exists`` when the name is taken.
        """
        with self._store.transaction() as tx:
            record = upload_in(
                tx,
                name,
                certificate,
                now=self._clock(),
                fleetpki_ca_id=fleetpki_ca_id,
                verified=verified,
            )
            return hub_ca_view(record)

    def get(self, name: str) -> HubCAView:
        """The hub CA called ``name``.

        Raises:
            NotFoundError: ``hub.ca_not_found``.
        """
        with self._store.reading() as tx:
            return hub_ca_view(require_hub_ca(tx, name))

    def list(self) -> list[HubCAView]:
        """Every hub CA, by name."""
        with self._store.reading() as tx:
            return [hub_ca_view(r) for r in tx.hub_cas.list()]

    def generate_verification_code(self, name: str, *, if_match: str | None = None) -> HubCAView:
        """Give the CA a new verification code (40 hex characters, ref §4.1) and a new etag.

        Raises:
            NotFoundError: ``hub.ca_not_found``.
            ConflictError: ``precondition.failed``.
        """
        with self._store.transaction() as tx:
            record = verification_code_in(tx, name, now=self._clock(), if_match=if_match)
            return hub_ca_view(record)

    def verify(
        self, name: str, verification_certificate: bytes | str, *, if_match: str | None = None
    ) -> HubCAView:
        """Check proof of possession and mark the CA verified (ref §4.1 steps 3-4).

        The verification certificate's subject CN must equal the current code, and its
        signature must check with the uploaded CA's public key.

        Raises:
            NotFoundError: ``hub.ca_not_found``.
            ConflictError: ``precondition.failed``; ``hub.no_verification_code`` before
                a code was generated.
            ValidationError: ``certificate.malformed``, ``hub.verification_cn_mismatch``,
                ``hub.verification_bad_signature``.
        """
        with self._store.transaction() as tx:
            record = verify_in(
                tx, name, verification_certificate, now=self._clock(), if_match=if_match
            )
            return hub_ca_view(record)

    def delete(self, name: str, *, if_match: str | None = None) -> None:
        """Remove a hub CA; devices chaining only to it are refused from the next connect.

        Raises:
            NotFoundError: ``hub.ca_not_found``.
            ConflictError: ``precondition.failed``.
        """
        with self._store.transaction() as tx:
            delete_in(tx, name, if_match=if_match)

    def trust_local_ca(self, ca_id: str) -> HubCAView:
        """Trust a fleetpki CA in the hub through the whole proof-of-possession flow.

        Uploads the CA certificate (named after the CA), generates a code, signs a
        verification certificate for it with the CA's key and verifies it, in one unit
        of work. Running it again for a verified CA changes nothing.

        Raises:
            NotFoundError: ``ca.not_found``.
            ConflictError: ``hub.ca_exists`` when another certificate holds the CA's name.
        """
        with self._store.transaction() as tx:
            record = trust_local_ca_in(tx, self._keystore, ca_id, now=self._clock())
            return hub_ca_view(record)

    def trust_anchors(self, tx: UnitOfWork) -> TrustAnchors:
        """The hub's anchors, inside the caller's unit of work (device authentication's).

        Served from this application's :class:`TrustCache` while ``hub_cas`` is unchanged.
        """
        return self.cache.anchors(tx)
