"""Encrypted PKCS#8 under scrypt: how private keys are kept in files.

A key file is an ``EncryptedPrivateKeyInfo`` (RFC 5958 §3) in PEM, encrypted with
PBES2 (RFC 8018 §6.2): the key-encryption key is derived from the passphrase with
scrypt (RFC 7914 §7, ``id-scrypt``) and the ``PrivateKeyInfo`` is encrypted with
AES-256-CBC. ``cryptography`` reads this form but writes only its
``BestAvailableEncryption`` (PBES2 with PBKDF2-HMAC-SHA256 at 2,048 iterations,
OpenSSL's default count), so the structure is written here.

Why these scrypt parameters (:data:`SCRYPT_COST`: N = 2^14, r = 8, p = 5): they are a
row of OWASP's Password Storage Cheat Sheet (its minimums for scrypt are equivalent
trade-offs between memory and passes: 2^17/8/1, 2^16/8/2, 2^15/8/3, 2^14/8/5, ...), and
the one of them whose 16 MiB fits OpenSSL 3's 32 MiB scrypt memory limit, so
``openssl pkey -in KEY`` still opens a key file with its passphrase (a backup, a move
into an HSM). A derivation takes about 0.17 s on this project's build machine; a key is
decrypted once per process.

:func:`protection_of` says how an existing file is protected, so that a key in a weaker
form (the old ``BestAvailableEncryption`` files, or anything below this cost) is
re-encrypted when it is next loaded (:func:`fleetpki.keystore.files.load_key_file`).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fleetpki.keystore.der import (
    DerError,
    Element,
    children,
    decode_integer,
    decode_oid,
    encode,
    encode_integer,
    encode_oid,
    whole,
)
from fleetpki.keystore.signer import PrivateKey

__all__ = [
    "SCRYPT_COST",
    "KeyProtection",
    "ScryptCost",
    "UnsupportedKeyError",
    "encrypt_private_key",
    "load_private_key",
    "protection_of",
]

_PBES2 = "1.2.840.113549.1.5.13"  # RFC 8018 §A.4
_PBKDF2 = "1.2.840.113549.1.5.12"  # RFC 8018 §A.2
_SCRYPT = "1.3.6.1.4.1.11591.4.11"  # RFC 7914 §7
_AES_256_CBC = "2.16.840.1.101.3.4.1.42"  # RFC 8018 §B.2.5 (NIST aes256-CBC-PAD)
_HMAC_NAMES = {
    "1.2.840.113549.2.7": "HMAC-SHA1",
    "1.2.840.113549.2.9": "HMAC-SHA256",
    "1.2.840.113549.2.10": "HMAC-SHA384",
    "1.2.840.113549.2.11": "HMAC-SHA512",
}
_SEQUENCE = 0x30
_OCTET_STRING = 0x04
_PEM_LABEL = "ENCRYPTED PRIVATE KEY"
_SALT_BYTES = 16
_KEY_BYTES = 32


class UnsupportedKeyError(ValueError):
    """The file holds a private key of a type fleetpki does not use."""


@dataclass(frozen=True, slots=True)
class ScryptCost:
    """The scrypt parameters (RFC 7914 §2): CPU/memory cost N, block size r, parallelism p."""

    n: int
    r: int
    p: int

    @property
    def memory_bytes(self) -> int:
        """What one derivation holds in memory (128 · r · N bytes)."""
        return 128 * self.r * self.n

    def at_least(self, other: ScryptCost) -> bool:
        """Whether this costs an attacker at least as much as ``other`` per guess.

        Memory per guess (N · r) and the work (N · r · p) must both be at least
        ``other``'s: fewer passes cannot pay for less memory, nor the reverse.
        """
        return (
            self.n * self.r >= other.n * other.r
            and self.n * self.r * self.p >= other.n * other.r * other.p
        )

    def __str__(self) -> str:
        return f"scrypt N={self.n}, r={self.r}, p={self.p}"


#: The cost of every key written (see the module's docstring for the choice).
SCRYPT_COST = ScryptCost(n=2**14, r=8, p=5)


@dataclass(frozen=True, slots=True)
class KeyProtection:
    """How a PEM private key file is protected.

    Attributes:
        description: for a log line: ``"scrypt N=16384, r=8, p=5"``,
            ``"PBKDF2 (HMAC-SHA256) with 2048 iterations"``, ``"no encryption"``.
        scrypt: the scrypt parameters, when the key is under PBES2 with scrypt.
    """

    description: str
    scrypt: ScryptCost | None = None

    @property
    def current(self) -> bool:
        """Whether the key is as well protected as a key written now (else: re-encrypt)."""
        return self.scrypt is not None and self.scrypt.at_least(SCRYPT_COST)


def encrypt_private_key(
    key: PrivateKey, passphrase: bytes, *, cost: ScryptCost = SCRYPT_COST
) -> bytes:
    """``key`` as an encrypted PKCS#8 PEM: PBES2 with scrypt and AES-256-CBC.

    Args:
        key: the private key.
        passphrase: the secret the key-encryption key is derived from.
        cost: the scrypt parameters (tests of the re-encryption pass a weaker one).
    """
    salt, iv = os.urandom(_SALT_BYTES), os.urandom(16)
    kek = Scrypt(salt=salt, length=_KEY_BYTES, n=cost.n, r=cost.r, p=cost.p).derive(passphrase)
    info = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    plain = padder.update(info) + padder.finalize()
    encryptor = Cipher(algorithms.AES(kek), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(plain) + encryptor.finalize()
    scrypt_params = encode(
        _SEQUENCE,
        encode(_OCTET_STRING, salt)
        + encode_integer(cost.n)
        + encode_integer(cost.r)
        + encode_integer(cost.p),
    )
    pbes2_params = encode(
        _SEQUENCE,
        encode(_SEQUENCE, encode_oid(_SCRYPT) + scrypt_params)
        + encode(_SEQUENCE, encode_oid(_AES_256_CBC) + encode(_OCTET_STRING, iv)),
    )
    algorithm = encode(_SEQUENCE, encode_oid(_PBES2) + pbes2_params)
    der = encode(_SEQUENCE, algorithm + encode(_OCTET_STRING, encrypted))
    return _pem(der)


def load_private_key(pem: bytes, passphrase: bytes) -> PrivateKey:
    """Decrypt a PEM private key (any form ``cryptography`` reads, scrypt included).

    Raises:
        UnsupportedKeyError: a key of a type fleetpki does not use.
        ValueError: the passphrase is wrong or the file is not a key.
    """
    is_encrypted = f"BEGIN {_PEM_LABEL}".encode() in pem
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase if is_encrypted else None)
    except TypeError as exc:  # encrypted in a PEM form that names no encryption
        raise ValueError(str(exc)) from exc
    if not isinstance(key, PrivateKey):
        raise UnsupportedKeyError(f"unsupported private key type {type(key).__name__}")
    return key


def protection_of(pem: bytes) -> KeyProtection:
    """How the PEM private key ``pem`` is protected (read from its algorithm identifiers).

    Raises:
        ValueError: ``pem`` is not a PEM private key.
    """
    if f"BEGIN {_PEM_LABEL}".encode() not in pem:
        if b"PRIVATE KEY-----" in pem:
            return KeyProtection("no encryption")
        raise ValueError("not a PEM private key")
    try:
        return _protection(whole(_der(pem)))
    except (DerError, IndexError) as exc:
        raise ValueError(f"unreadable EncryptedPrivateKeyInfo: {exc}") from exc


def _protection(info: Element) -> KeyProtection:
    algorithm, _encrypted = children(info)
    scheme, *parameters = children(algorithm)
    scheme_oid = decode_oid(scheme)
    if scheme_oid != _PBES2 or not parameters:
        return KeyProtection(f"the PKCS#5 scheme {scheme_oid} (not PBES2)")
    kdf, _cipher = children(parameters[0])
    kdf_oid, *kdf_parameters = children(kdf)
    fields = children(kdf_parameters[0]) if kdf_parameters else []
    name = decode_oid(kdf_oid)
    if name == _SCRYPT:
        cost = ScryptCost(*(decode_integer(field) for field in fields[1:4]))
        return KeyProtection(str(cost), scrypt=cost)
    if name == _PBKDF2:
        iterations = decode_integer(fields[1])
        prf = next((f for f in fields[2:] if f.tag == _SEQUENCE), None)
        hmac = _HMAC_NAMES.get(decode_oid(children(prf)[0]), "HMAC") if prf else "HMAC-SHA1"
        return KeyProtection(f"PBKDF2 ({hmac}) with {iterations} iterations")
    return KeyProtection(f"PBES2 with the key derivation {name}")


def _pem(der: bytes) -> bytes:
    # Imported here: fleetpki.pki imports the keystore (its signers) as it loads.
    from fleetpki.pki.pem import pem_text

    return pem_text(der, _PEM_LABEL).encode()


def _der(pem: bytes) -> bytes:
    text = pem.decode("ascii", errors="replace")
    begin, end = f"-----BEGIN {_PEM_LABEL}-----", f"-----END {_PEM_LABEL}-----"
    start = text.index(begin) + len(begin)
    return base64.b64decode("".join(text[start : text.index(end, start)].split()), validate=True)
