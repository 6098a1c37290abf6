"""A device's identity: its key, certificate chain, trusted CAs and metadata in a directory.

Layout of a device directory (created with mode 0700)::

    device.key      the private key, PKCS#8 PEM, mode 0600, encrypted when a passphrase
                    is given (``BestAvailableEncryption``: AES-256-CBC, PBKDF2)
    device.pem      the certificate followed by the intermediates (what TLS sends)
    ca-bundle.pem   the CAs the device trusts for the servers it talks to
    device.json     metadata: id, how it enrolled, where, CA and template, renewals

Saving writes every file next to its final name first and renames them into place, key
before certificate. A crash between the two renames leaves ``device.pem.new``; `load`
finishes the job when the key on disk belongs to that certificate.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import ssl
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.errors import NotFoundError, ValidationError
from fleetpki.keystore import PrivateKey
from fleetpki.pki.issuance import thumbprints

__all__ = [
    "CA_BUNDLE_FILE",
    "CERTIFICATE_FILE",
    "KEY_FILE",
    "METADATA_FILE",
    "DeviceDirectory",
    "DeviceIdentity",
    "DeviceMetadata",
    "certificates_pem",
    "client_ssl_context",
    "key_matches_certificate",
    "parse_certificates",
]

KEY_FILE = "device.key"
CERTIFICATE_FILE = "device.pem"
CA_BUNDLE_FILE = "ca-bundle.pem"
METADATA_FILE = "device.json"
_NEW = ".new"
_METADATA_VERSION = 1


def parse_certificates(pem: str | bytes) -> tuple[x509.Certificate, ...]:
    """Every certificate in a PEM text, in order.

    Raises:
        ValidationError: ``device.bad_certificate`` when there is none or one is malformed.
    """
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        found = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise ValidationError("device.bad_certificate", "no valid PEM certificate") from exc
    return found


def certificates_pem(certificates: tuple[x509.Certificate, ...] | list[x509.Certificate]) -> str:
    """Certificates as concatenated PEM text."""
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


def key_matches_certificate(key: PrivateKey, certificate: x509.Certificate) -> bool:
    """Whether ``key`` is the private key of ``certificate``."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(
        serialization.Encoding.DER, fmt
    ) == certificate.public_key().public_bytes(serialization.Encoding.DER, fmt)


@dataclass(frozen=True, slots=True)
class DeviceMetadata:
    """What a device remembers about its enrollment, besides key and certificates.

    Attributes:
        device_id: the device id (certificate CN, MQTT client id).
        method: how it enrolled: ``ezca``, ``v1`` or ``est``.
        server_url: the CA server it enrolled with.
        ca_id: the issuing CA's id, when known.
        template_id: the template's id, when known.
        auto_renew_percentage: the template's AutoRenewPercentage, when known.
        renewals: how many times the certificate was renewed.
        renewed_at: when the current certificate was saved (UTC), if after a renewal.
    """

    device_id: str
    method: str
    server_url: str | None = None
    ca_id: str | None = None
    template_id: str | None = None
    auto_renew_percentage: int | None = None
    renewals: int = 0
    renewed_at: dt.datetime | None = None

    def to_json(self, certificate: x509.Certificate | None = None) -> dict[str, Any]:
        """The JSON object stored in ``device.json`` (certificate facts added for people)."""
        data: dict[str, Any] = {
            "version": _METADATA_VERSION,
            "device_id": self.device_id,
            "method": self.method,
            "server_url": self.server_url,
            "ca_id": self.ca_id,
            "template_id": self.template_id,
            "auto_renew_percentage": self.auto_renew_percentage,
            "renewals": self.renewals,
            "renewed_at": self.renewed_at.isoformat() if self.renewed_at else None,
        }
        if certificate is not None:
            sha1, _ = thumbprints(certificate.public_bytes(serialization.Encoding.DER))
            data["certificate"] = {
                "serial": format(certificate.serial_number, "X"),
                "sha1": sha1,
                "not_before": certificate.not_valid_before_utc.isoformat(),
                "not_after": certificate.not_valid_after_utc.isoformat(),
            }
        return data

    @classmethod
    def from_json(cls, data: Any) -> DeviceMetadata:
        """Read ``device.json`` content.

        Raises:
            ValidationError: ``device.bad_metadata`` for anything but the expected object.
        """
        try:
            if not isinstance(data, dict) or data.get("version") != _METADATA_VERSION:
                raise TypeError("not a version 1 device.json object")
            renewed_at = data.get("renewed_at")
            percentage = data.get("auto_renew_percentage")
            return cls(
                device_id=str(data["device_id"]),
                method=str(data["method"]),
                server_url=_optional_str(data.get("server_url")),
                ca_id=_optional_str(data.get("ca_id")),
                template_id=_optional_str(data.get("template_id")),
                auto_renew_percentage=None if percentage is None else int(percentage),
                renewals=int(data.get("renewals", 0)),
                renewed_at=dt.datetime.fromisoformat(renewed_at) if renewed_at else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError("device.bad_metadata", "device.json is not valid") from exc


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device's key and certificates, in memory.

    Attributes:
        key: the private key (never sent anywhere).
        certificate: the device certificate.
        chain: the intermediates that follow it (the issuing CA first), not the root.
        ca_bundle: the CAs the device trusts for its servers (the CA's root).
        metadata: enrollment facts.
    """

    key: PrivateKey = field(repr=False)
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    ca_bundle: tuple[x509.Certificate, ...]
    metadata: DeviceMetadata

    @property
    def device_id(self) -> str:
        """The device id."""
        return self.metadata.device_id

    @property
    def not_before(self) -> dt.datetime:
        """The certificate's start of validity (UTC)."""
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        """The certificate's end of validity (UTC)."""
        return self.certificate.not_valid_after_utc

    @property
    def lifetime(self) -> dt.timedelta:
        """``not_after - not_before``."""
        return self.not_after - self.not_before

    @property
    def serial_hex(self) -> str:
        """The certificate's serial number, upper-case hex."""
        return format(self.certificate.serial_number, "X")

    @property
    def sha1_hex(self) -> str:
        """The certificate's SHA-1 thumbprint, upper-case hex (as Azure and EZCA print it)."""
        sha1, _ = thumbprints(self.certificate.public_bytes(serialization.Encoding.DER))
        return sha1.upper()

    @property
    def certificate_pem(self) -> str:
        """The certificate alone, PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def chain_pem(self) -> str:
        """The certificate and its intermediates, PEM: what a TLS client sends."""
        return certificates_pem((self.certificate, *self.chain))

    @property
    def ca_bundle_pem(self) -> str:
        """The trusted CAs, PEM."""
        return certificates_pem(self.ca_bundle)

    def key_pem(self, passphrase: bytes | None = None) -> bytes:
        """The key as PKCS#8 PEM, encrypted when ``passphrase`` is given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def renewed(
        self,
        key: PrivateKey,
        certificate: x509.Certificate,
        chain: tuple[x509.Certificate, ...],
        *,
        now: dt.datetime,
        ca_bundle: tuple[x509.Certificate, ...] | None = None,
    ) -> DeviceIdentity:
        """A copy with a renewed certificate (and key), counting the renewal.

        ``ca_bundle`` replaces the trusted CAs when given; otherwise they stay.

        Raises:
            ValidationError: ``device.key_mismatch`` when ``key`` does not belong to
            ``certificate``.
        """
        if not key_matches_certificate(key, certificate):
            raise ValidationError("device.key_mismatch", "the key does not match the certificate")
        metadata = replace(self.metadata, renewals=self.metadata.renewals + 1, renewed_at=now)
        return replace(
            self,
            key=key,
            certificate=certificate,
            chain=chain,
            ca_bundle=self.ca_bundle if ca_bundle is None else ca_bundle,
            metadata=metadata,
        )


def client_ssl_context(
    identity: DeviceIdentity | None,
    *,
    ca_bundle: Path | str | None = None,
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
) -> ssl.SSLContext:
    """A TLS client context that presents ``identity``'s certificate chain.

    Args:
        identity: the device; ``None`` for a context without a client certificate.
        ca_bundle: the CAs to trust for the server: a PEM file. By default the identity's
            own CA bundle, else the system's roots (what Azure IoT Hub needs).
        minimum_version: TLS 1.2 by default, what Azure IoT Hub and its SDKs speak; the
            server may pick 1.3.

    The context checks the server's certificate and host name. ``ssl`` loads keys only
    from files, so the key passes through a private temporary file encrypted with a
    one-time passphrase, removed before this function returns.
    """
    # PROTOCOL_TLS_CLIENT: CERT_REQUIRED and check_hostname; only the named CAs are
    # trusted (create_default_context would add the system's roots to them).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = minimum_version
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    elif identity is not None and identity.ca_bundle:
        context.load_verify_locations(cadata=identity.ca_bundle_pem)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if identity is not None:
        one_time = secrets.token_urlsafe(32).encode()
        with tempfile.TemporaryDirectory(prefix="fleetpki-tls-") as folder:
            key_path, chain_path = Path(folder, "key.pem"), Path(folder, "chain.pem")
            _write_private(key_path, identity.key_pem(one_time), 0o600)
            _write_private(chain_path, identity.chain_pem.encode(), 0o600)
            context.load_cert_chain(chain_path, key_path, password=one_time)
    return context


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` created afresh with ``mode`` (not widened by the umask)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class DeviceDirectory:
    """A device directory on disk: saves and loads a `DeviceIdentity`.

    Args:
        path: the directory (created with mode 0700 on first save).
        passphrase: encrypts the key on save and decrypts it on load; ``None`` keeps the
            key unencrypted (still mode 0600).
    """

    def __init__(self, path: Path | str, passphrase: bytes | str | None = None) -> None:
        self.path = Path(path)
        self._passphrase = passphrase.encode() if isinstance(passphrase, str) else passphrase

    def __repr__(self) -> str:
        encrypted = "encrypted" if self._passphrase else "plain"
        return f"DeviceDirectory({str(self.path)!r}, {encrypted})"

    @property
    def key_path(self) -> Path:
        """``device.key``."""
        return self.path / KEY_FILE

    @property
    def certificate_path(self) -> Path:
        """``device.pem``: the certificate and its intermediates."""
        return self.path / CERTIFICATE_FILE

    @property
    def ca_bundle_path(self) -> Path:
        """``ca-bundle.pem``."""
        return self.path / CA_BUNDLE_FILE

    @property
    def metadata_path(self) -> Path:
        """``device.json``."""
        return self.path / METADATA_FILE

    def exists(self) -> bool:
        """Whether the directory holds a saved identity."""
        return self.metadata_path.exists() and self.key_path.exists()

    def save(self, identity: DeviceIdentity) -> None:
        """Write ``identity``: the key (0600) and certificate swapped in by renames."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = [
            (self.key_path, identity.key_pem(self._passphrase), 0o600),
            (self.certificate_path, identity.chain_pem.encode(), 0o644),
            (self.ca_bundle_path, identity.ca_bundle_pem.encode(), 0o644),
            (
                self.metadata_path,
                json.dumps(identity.metadata.to_json(identity.certificate), indent=2).encode()
                + b"\n",
                0o644,
            ),
        ]
        for path, data, mode in files:
            _write_private(path.with_name(path.name + _NEW), data, mode)
        for path, _, _ in files:
            path.with_name(path.name + _NEW).replace(path)

    def load(self) -> DeviceIdentity:
        """Read the identity back.

        Raises:
            NotFoundError: ``device.not_enrolled`` when the directory holds no identity.
            ValidationError: ``device.key_locked`` (encrypted, no passphrase),
                ``device.bad_passphrase``, ``device.key_permissions`` (the key file is
                readable by others), ``device.key_mismatch``, ``device.bad_certificate``,
                ``device.bad_metadata``.
        """
        if not self.exists():
            raise NotFoundError("device.not_enrolled", f"no device identity in {self.path}")
        self._finish_interrupted_save()
        if self.key_path.stat().st_mode & 0o077:
            raise ValidationError(
                "device.key_permissions", f"{self.key_path} must not be readable by others"
            )
        key = self._load_key(self.key_path.read_bytes())
        certificates = parse_certificates(self.certificate_path.read_bytes())
        if not key_matches_certificate(key, certificates[0]):
            raise ValidationError(
                "device.key_mismatch", "the device key does not match its certificate"
            )
        bundle: tuple[x509.Certificate, ...] = ()
        if self.ca_bundle_path.exists() and self.ca_bundle_path.stat().st_size:
            bundle = parse_certificates(self.ca_bundle_path.read_bytes())
        try:
            raw = json.loads(self.metadata_path.read_text())
        except ValueError as exc:
            raise ValidationError("device.bad_metadata", "device.json is not JSON") from exc
        return DeviceIdentity(
            key=key,
            certificate=certificates[0],
            chain=certificates[1:],
            ca_bundle=bundle,
            metadata=DeviceMetadata.from_json(raw),
        )

    def _load_key(self, data: bytes) -> PrivateKey:
        try:
            key = serialization.load_pem_private_key(data, password=self._passphrase)
        except TypeError as exc:
            # cryptography: TypeError when a password is missing or given for a plain key.
            code = "device.key_locked" if not self._passphrase else "device.key_not_encrypted"
            raise ValidationError(code, "the device key and the passphrase do not fit") from exc
        except ValueError as exc:
            raise ValidationError(
                "device.bad_passphrase", "the device key cannot be decrypted"
            ) from exc
        return key  # type: ignore[return-value]

    def _finish_interrupted_save(self) -> None:
        """Complete a save that stopped between renaming the key and the certificate."""
        pending = [
            p.with_name(p.name + _NEW)
            for p in (self.certificate_path, self.ca_bundle_path, self.metadata_path)
        ]
        if not pending[0].exists() or self.key_path.with_name(KEY_FILE + _NEW).exists():
            return
        try:
            key = self._load_key(self.key_path.read_bytes())
            leaf = parse_certificates(pending[0].read_bytes())[0]
        except ValidationError:
            return
        if key_matches_certificate(key, leaf):
            for path in pending:
                if path.exists():
                    path.replace(path.with_name(path.name.removesuffix(_NEW)))
