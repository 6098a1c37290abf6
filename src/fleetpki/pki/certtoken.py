"""Certificate tokens: a short JWT a device signs with its current certificate's key.

EZCA's renewal and self-revocation routes authenticate the device by such a token
(``shared/reference/ezca-api.md``): the header's ``x5t`` is the certificate's SHA-1
thumbprint as hex (upper case from .NET, either case accepted), the claims carry
``aud`` (the server's base URL), ``jti``, ``nbf`` and ``exp``.  The certificate
itself travels beside the token.  This module makes and checks such tokens; the
service checks the rest (our certificate, not revoked, ``jti`` not replayed).
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from dataclasses import dataclass

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fleetpki.errors import AuthenticationError
from fleetpki.keystore import PrivateKey
from fleetpki.pki.issuance import thumbprints

__all__ = [
    "ACCEPTED_ALGORITHMS",
    "MAX_TOKEN_LIFETIME",
    "CertificateTokenClaims",
    "make_certificate_token",
    "verify_certificate_token",
]

#: JWS algorithms accepted for certificate tokens (RFC 7518 §3, RFC 8037 §3.1).
ACCEPTED_ALGORITHMS = ("RS256", "PS256", "ES256", "ES384", "EdDSA")
#: A token valid for longer than this is refused: it would be a long-lived credential.
MAX_TOKEN_LIFETIME = dt.timedelta(hours=1)
_LEEWAY = dt.timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class CertificateTokenClaims:
    """The checked claims of a certificate token."""

    jti: str
    expires_at: dt.datetime
    sha1_hex: str


def _algorithm_for(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES384" if key.curve.key_size >= 384 else "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise AuthenticationError("certtoken.unsupported_key", "unsupported key type for a token")


def make_certificate_token(
    certificate: x509.Certificate,
    key: PrivateKey,
    *,
    audience: str,
    now: dt.datetime,
    lifetime: dt.timedelta = dt.timedelta(minutes=30),
) -> str:
    """Sign a certificate token for ``certificate`` with its private ``key``."""
    sha1, _ = thumbprints(certificate.public_bytes(serialization.Encoding.DER))
    claims = {
        "aud": audience,
        "jti": str(uuid.uuid4()),
        "nbf": int(now.timestamp()),
        "iat": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
    }
    return jwt.encode(
        claims, key, algorithm=_algorithm_for(key), headers={"typ": "JWT", "x5t": sha1}
    )


def _x5t_matches(x5t: str, sha1_hex: str, sha1_raw: bytes) -> bool:
    if x5t.lower() == sha1_hex.lower():
        return True
    # RFC 7515 §4.1.7 defines x5t as base64url of the SHA-1 digest; accept that too.
    try:
        return base64.urlsafe_b64decode(x5t + "=" * (-len(x5t) % 4)) == sha1_raw
    except (ValueError, TypeError):
        return False


def verify_certificate_token(
    token: str, certificate: x509.Certificate, *, audience: str, now: dt.datetime
) -> CertificateTokenClaims:
    """Check a certificate token's signature, ``x5t``, audience and times.

    Raises:
        AuthenticationError: ``certtoken.invalid`` (malformed, bad signature, wrong
        audience, expired or not yet valid, missing claims), ``certtoken.x5t_mismatch``.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise AuthenticationError(
            "certtoken.invalid", "the certificate token is malformed"
        ) from exc
    der = certificate.public_bytes(serialization.Encoding.DER)
    sha1_hex, _ = thumbprints(der)
    x5t = header.get("x5t")
    if not isinstance(x5t, str) or not _x5t_matches(x5t, sha1_hex, bytes.fromhex(sha1_hex)):
        raise AuthenticationError(
            "certtoken.x5t_mismatch", "the token's x5t does not match the certificate"
        )
    if header.get("alg") not in ACCEPTED_ALGORITHMS:
        raise AuthenticationError("certtoken.invalid", "the token's algorithm is not accepted")
    try:
        claims = jwt.decode(
            token,
            certificate.public_key(),  # type: ignore[arg-type]
            algorithms=list(ACCEPTED_ALGORITHMS),
            audience=audience,
            leeway=_LEEWAY,
            # PyJWT would compare times with the system clock; they are checked
            # below against the injected clock instead.
            options={
                "require": ["exp", "nbf", "jti", "aud"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.PyJWTError as exc:
        raise AuthenticationError(
            "certtoken.invalid", f"the certificate token is not valid: {type(exc).__name__}"
        ) from exc
    exp = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
    nbf = dt.datetime.fromtimestamp(int(claims["nbf"]), dt.UTC)
    if now > exp + _LEEWAY or now < nbf - _LEEWAY:
        raise AuthenticationError(
            "certtoken.invalid", "the certificate token has expired or is not yet valid"
        )
    if exp - nbf > MAX_TOKEN_LIFETIME:
        raise AuthenticationError("certtoken.invalid", "the certificate token lives too long")
    jti = claims["jti"]
    if not isinstance(jti, str) or not 1 <= len(jti) <= 128:
        raise AuthenticationError("certtoken.invalid", "the certificate token's jti is invalid")
    return CertificateTokenClaims(jti=jti, expires_at=exp, sha1_hex=sha1_hex)
