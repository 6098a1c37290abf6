"""The signer protocol: what a CA key can do without showing itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509 import ocsp

if TYPE_CHECKING:
    # Only for annotations: pki.keys imports this module's key types at run time.
    from fleetpki.pki.keys import KeySpec

__all__ = ["KeyStore", "PrivateKey", "PublicKey", "Signer", "hash_for_key"]

PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


def hash_for_key(key: PublicKey | PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """Return the signature hash that goes with a CA key.

    SHA-384 for P-384 (RFC 5480 §4 pairs curve and hash strength), SHA-256 for
    P-256 and RSA, and ``None`` for EdDSA keys, which hash internally.
    """
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return None
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if key.curve.key_size >= 384:
            return hashes.SHA384()
        return hashes.SHA256()
    return hashes.SHA256()


@runtime_checkable
class Signer(Protocol):
    """A CA key that signs certificates, CRLs and OCSP responses.

    Implementations never expose the private key; they sign what they are given.
    """

    @property
    def key_ref(self) -> str:
        """The reference under which the keystore knows this key."""
        ...

    def public_key(self) -> PublicKey:
        """The public half of the key."""
        ...

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """Sign a certificate builder with the key and its matching hash."""
        ...

    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder
    ) -> x509.CertificateRevocationList:
        """Sign a CRL builder."""
        ...

    def sign_ocsp(
        self, builder: ocsp.OCSPResponseBuilder, responder_cert: x509.Certificate
    ) -> ocsp.OCSPResponse:
        """Name the responder and sign an OCSP response builder.

        ``builder`` has no responder ID yet: the signer sets it to the key hash of
        ``responder_cert`` (RFC 6960 §4.2.2.3), the certificate of this key, since a
        signer whose key ``cryptography`` cannot hold must name it itself.
        """
        ...


class KeyStore(Protocol):
    """Where CA keys are generated and kept; a key never leaves it.

    Attributes:
        signs_in_process: whether signing is CPU work in this process and nothing else
            (no token, no network), so that an event loop may sign without a thread.
    """

    signs_in_process: bool

    def generate(self, spec: KeySpec) -> Signer:
        """Generate a new key of ``spec`` inside the keystore and return its signer.

        Raises:
            ValidationError: ``keystore.unsupported_key`` for a spec the backend cannot make.
            ConflictError: ``keystore.token_full`` when the backend has no room for it.
        """
        ...

    def discard(self, key_ref: str) -> None:
        """Destroy a key that was generated but never used (its CA was not created).

        Missing keys are ignored.
        """
        ...

    def signer(self, key_ref: str) -> Signer:
        """Load the signer for a stored key.

        Raises:
            NotFoundError: ``keystore.key_missing`` when no key has that reference.
            ValidationError: ``keystore.bad_passphrase`` when the key cannot be decrypted.
        """
        ...

    def close(self) -> None:
        """Release what the keystore holds open (a token session); signers stop working."""
        ...
