"""Encrypted PKCS#8 key files: the default keystore backend."""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from fleetpki.errors import NotFoundError, ValidationError
from fleetpki.keystore.signer import PrivateKey, PublicKey, Signer, hash_for_key

if TYPE_CHECKING:
    from fleetpki.pki.keys import KeySpec

__all__ = ["PASSPHRASE_ENV", "FileKeyStore", "FileSigner", "load_or_create_passphrase"]

#: Environment variable that, when set, holds the passphrase for CA key files.
PASSPHRASE_ENV = "FLEETPKI_KEY_PASSPHRASE"  # noqa: S105 (a variable name)
_SECRET_FILE = "key-passphrase"  # noqa: S105 (a file name)
_FILE_PREFIX = "file:"


def load_or_create_passphrase(home: Path, *, create: bool = False) -> bytes:
    """Return the passphrase that encrypts CA keys in ``home``.

    ``FLEETPKI_KEY_PASSPHRASE`` wins when set.  Otherwise the passphrase lives in
    ``home/key-passphrase`` (mode 0600), generated when ``create`` is true.

    Raises:
        NotFoundError: ``keystore.passphrase_missing`` when neither exists.
    """
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env:
        return from_env.encode()
    path = home / _SECRET_FILE
    if path.exists():
        return path.read_bytes().strip()
    if not create:
        raise NotFoundError(
            "keystore.passphrase_missing",
            f"no key passphrase: set {PASSPHRASE_ENV} or restore {path}",
        )
    secret = secrets.token_urlsafe(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret + b"\n")
    return secret


class FileSigner:
    """A signer backed by a private key decrypted into memory from its file."""

    def __init__(self, key_ref: str, key: PrivateKey) -> None:
        self._key_ref = key_ref
        self._key = key

    @property
    def key_ref(self) -> str:
        """The ``file:NAME`` reference of this key."""
        return self._key_ref

    def public_key(self) -> PublicKey:
        """The public half of the key."""
        return self._key.public_key()

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """Sign ``builder`` with the key and its matching hash."""
        return builder.sign(self._key, hash_for_key(self._key))

    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder
    ) -> x509.CertificateRevocationList:
        """Sign a CRL builder."""
        return builder.sign(self._key, hash_for_key(self._key))

    def sign_ocsp(
        self, builder: ocsp.OCSPResponseBuilder, responder_cert: x509.Certificate
    ) -> ocsp.OCSPResponse:
        """Name ``responder_cert`` by key hash (RFC 6960 §4.2.2.3) and sign the response."""
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, responder_cert)
        return builder.sign(self._key, hash_for_key(self._key))

    def __repr__(self) -> str:
        return f"FileSigner({self._key_ref!r})"


class FileKeyStore:
    """Keeps each CA key as an encrypted PKCS#8 PEM file of mode 0600 in one folder.

    Args:
        directory: the folder for key files; created with mode 0700 if missing.
        passphrase: the secret that encrypts every key (``BestAvailableEncryption``).
    """

    #: Keys are decrypted into memory once; signing is cryptography's, in this process.
    signs_in_process = True

    def __init__(self, directory: Path, passphrase: bytes) -> None:
        if not passphrase:
            raise ValidationError("keystore.passphrase_empty", "the key passphrase is empty")
        self._dir = directory
        self._passphrase = passphrase
        self._cache: dict[str, FileSigner] = {}

    def generate(self, spec: KeySpec) -> Signer:
        """Generate a key of ``spec`` in memory, encrypt it into a new file, return its signer."""
        # pki.keys imports this package's key types, so it is imported when first used.
        from fleetpki.pki.keys import generate_key

        return self.store(generate_key(spec))

    def store(self, key: PrivateKey) -> Signer:
        """Encrypt an existing ``key`` into a new file and return its signer."""
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{uuid.uuid4()}.pem"
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self._passphrase),
        )
        fd = os.open(self._dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        signer = FileSigner(_FILE_PREFIX + name, key)
        self._cache[signer.key_ref] = signer
        return signer

    def discard(self, key_ref: str) -> None:
        """Delete the file of a key that was never used; missing files are ignored."""
        self._cache.pop(key_ref, None)
        self._path(key_ref).unlink(missing_ok=True)

    def close(self) -> None:
        """Forget the decrypted keys (nothing else is held open)."""
        self._cache.clear()

    def _path(self, key_ref: str) -> Path:
        if not key_ref.startswith(_FILE_PREFIX) or "/" in key_ref or ".." in key_ref:
            raise NotFoundError("keystore.key_missing", f"unknown key reference {key_ref!r}")
        return self._dir / key_ref.removeprefix(_FILE_PREFIX)

    def signer(self, key_ref: str) -> Signer:
        """Load the signer for ``key_ref`` (``file:NAME``), decrypting it once."""
        cached = self._cache.get(key_ref)
        if cached is not None:
            return cached
        path = self._path(key_ref)
        try:
            pem = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError("keystore.key_missing", f"CA key file {path} is missing") from exc
        try:
            key = serialization.load_pem_private_key(pem, password=self._passphrase)
        except (ValueError, TypeError) as exc:
            raise ValidationError(
                "keystore.bad_passphrase", f"cannot decrypt CA key {path.name}: wrong passphrase?"
            ) from exc
        if not isinstance(key, PrivateKey):
            raise ValidationError(
                "keystore.unsupported_key", f"unsupported key type in {path.name}"
            )
        signer = FileSigner(key_ref, key)
        self._cache[key_ref] = signer
        return signer
