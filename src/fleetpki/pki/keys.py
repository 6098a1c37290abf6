"""Key specifications: the closed set of key types fleetpki makes and accepts."""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fleetpki.errors import ValidationError
from fleetpki.keystore import PrivateKey, PublicKey

__all__ = ["CA_KEY_SPECS", "KeySpec", "generate_key", "key_spec_of"]


class KeySpec(enum.Enum):
    """A key algorithm and size, named as the CLI and the configuration spell it."""

    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    ED25519 = "ed25519"

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        """Parse a key spec name such as ``ec-p256``, refusing unknown names.

        Raises:
            ValidationError: ``key.unknown_type`` naming the accepted values.
        """
        try:
            return cls(text.strip().lower())
        except ValueError:
            accepted = ", ".join(spec.value for spec in cls)
            raise ValidationError(
                "key.unknown_type", f"unknown key type {text!r}; use one of: {accepted}"
            ) from None

    @property
    def is_rsa(self) -> bool:
        """Whether this is an RSA key spec."""
        return self.value.startswith("rsa-")

    @property
    def is_ec(self) -> bool:
        """Whether this is an elliptic-curve (ECDSA) key spec."""
        return self.value.startswith("ec-")


#: Key specs a CA may have.  Ed25519 CAs are left out: the Azure device SDK's TLS
#: stack and many IoT TLS libraries cannot verify Ed25519 chains.
CA_KEY_SPECS = frozenset(spec for spec in KeySpec if spec is not KeySpec.ED25519)

_CURVES: dict[KeySpec, ec.EllipticCurve] = {
    KeySpec.EC_P256: ec.SECP256R1(),
    KeySpec.EC_P384: ec.SECP384R1(),
}
_RSA_BITS: dict[KeySpec, int] = {
    KeySpec.RSA_2048: 2048,
    KeySpec.RSA_3072: 3072,
    KeySpec.RSA_4096: 4096,
}


def generate_key(spec: KeySpec) -> PrivateKey:
    """Generate a new private key of ``spec`` (RSA with public exponent 65537)."""
    if spec in _RSA_BITS:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[spec])
    if spec in _CURVES:
        return ec.generate_private_key(_CURVES[spec])
    return ed25519.Ed25519PrivateKey.generate()


def key_spec_of(key: PublicKey | PrivateKey) -> KeySpec | None:
    """Return the spec of ``key``, or ``None`` when it is outside the supported set.

    RSA keys map to the largest spec their size reaches, so a 2560-bit key counts as
    ``rsa-2048``; keys under 2048 bits and unsupported curves give ``None``.
    """
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        size = key.key_size
        if size >= 4096:
            return KeySpec.RSA_4096
        if size >= 3072:
            return KeySpec.RSA_3072
        if size >= 2048:
            return KeySpec.RSA_2048
        return None
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if isinstance(key.curve, ec.SECP256R1):
            return KeySpec.EC_P256
        if isinstance(key.curve, ec.SECP384R1):
            return KeySpec.EC_P384
        return None
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return KeySpec.ED25519
    return None
