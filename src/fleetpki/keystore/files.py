"""Encrypted PKCS#8 key files: the default keystore backend, and how any key file is kept.

Each CA key is a file of mode 0600 in the keys folder (0700), encrypted under the key
passphrase with scrypt (:mod:`fleetpki.keystore.pkcs8`). :func:`write_key_file` and
:func:`load_key_file` are also how the token endpoint keeps its signing key. A key found
in a weaker form than today's (the PBKDF2-2048 files of earlier versions) is
re-encrypted when it is loaded: written beside the old file and renamed over it, so a
crash leaves one of the two whole, and logged once (a warning naming the file and both
forms).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509 import ocsp

from fleetpki.errors import NotFoundError, ValidationError
from fleetpki.keystore.pkcs8 import (
    KeyProtection,
    UnsupportedKeyError,
    encrypt_private_key,
    load_private_key,
    protection_of,
)
from fleetpki.keystore.signer import PrivateKey, PublicKey, Signer, hash_for_key

try:  # POSIX: serialise the re-encryption of one file between processes
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from fleetpki.pki.keys import KeySpec

__all__ = ["FileKeyStore", "FileSigner", "load_key_file", "write_key_file"]

_log = logging.getLogger("fleetpki.keystore")
_FILE_PREFIX = "file:"


def write_key_file(path: Path, key: PrivateKey, passphrase: bytes) -> None:
    """Write ``key`` encrypted under ``passphrase`` to a new file of mode 0600.

    The file appears whole or not at all: it is written under a temporary name and
    linked into place, which fails if ``path`` exists.

    Raises:
        FileExistsError: ``path`` exists (nothing is overwritten).
    """
    temporary = _write_temporary(path, key, passphrase)
    try:
        os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _sync_directory(path.parent)


def _write_temporary(path: Path, key: PrivateKey, passphrase: bytes) -> Path:
    """``key`` encrypted into a new 0600 file beside ``path``, synced to disk."""
    pem = encrypt_private_key(key, passphrase)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def load_key_file(path: Path, passphrase: bytes, *, what: str = "CA key") -> PrivateKey:
    """Decrypt the key file ``path``; re-encrypt it first if its form is weaker than today's.

    Args:
        path: the PEM file.
        passphrase: the key passphrase.
        what: how the log line and errors name the key (``"CA key"``).

    Raises:
        NotFoundError: ``keystore.key_missing`` when there is no such file.
        ValidationError: ``keystore.bad_passphrase`` when it cannot be decrypted,
            ``keystore.unsupported_key`` for a key type fleetpki does not use.
    """
    try:
        pem = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError("keystore.key_missing", f"{what} file {path} is missing") from exc
    key = _decrypt(path, pem, passphrase, what)
    try:
        protection = protection_of(pem)
    except ValueError:
        protection = KeyProtection("an unreadable encryption")
    if not protection.current:
        _reencrypt(path, key, passphrase, what)
    return key


def _decrypt(path: Path, pem: bytes, passphrase: bytes, what: str) -> PrivateKey:
    try:
        return load_private_key(pem, passphrase)
    except UnsupportedKeyError as exc:
        raise ValidationError(
            "keystore.unsupported_key", f"unsupported key type in {path.name}"
        ) from exc
    except ValueError as exc:
        raise ValidationError(
            "keystore.bad_passphrase", f"cannot decrypt {what} {path.name}: wrong passphrase?"
        ) from exc


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # An advisory lock on the file itself: a second process that waited for it finds
    # the file renamed over and in the new form, and leaves it alone.
    with path.open("rb") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def _reencrypt(path: Path, key: PrivateKey, passphrase: bytes, what: str) -> None:
    """Put ``key`` back into ``path`` in today's form, atomically; log it once."""
    try:
        with _locked(path):
            pem = path.read_bytes()
            try:
                before = protection_of(pem)
            except ValueError:
                before = KeyProtection("an unreadable encryption")
            if before.current:
                return  # another process did it while we waited
            temporary = _write_temporary(path, key, passphrase)
            try:
                os.replace(temporary, path)
            finally:
                temporary.unlink(missing_ok=True)
            _sync_directory(path.parent)
    except OSError as exc:
        # The key works as it is; a read-only home keeps its old form until it can be written.
        _log.warning("could not re-encrypt %s %s in place: %s", what, path, exc)
        return
    after = protection_of(path.read_bytes())
    _log.warning(
        "re-encrypted %s %s: it was protected by %s, now by %s (same passphrase)",
        what,
        path,
        before.description,
        after.description,
    )


def _sync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform opens directories
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
        passphrase: the secret that encrypts every key (scrypt, :mod:`.pkcs8`).
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
        write_key_file(self._dir / name, key, self._passphrase)
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
        """Load the signer for ``key_ref`` (``file:NAME``), decrypting it once.

        A key file in a weaker form than today's is re-encrypted now (:func:`load_key_file`).

        Raises:
            NotFoundError: ``keystore.key_missing``.
            ValidationError: ``keystore.bad_passphrase``, ``keystore.unsupported_key``.
        """
        cached = self._cache.get(key_ref)
        if cached is not None:
            return cached
        key = load_key_file(self._path(key_ref), self._passphrase)
        signer = FileSigner(key_ref, key)
        self._cache[key_ref] = signer
        return signer
