"""OIDC bearer tokens (Entra ID style): signature by a JWKS, issuer, audience and time."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

from fleetpki.errors import AuthenticationError

__all__ = ["ACCEPTED_OIDC_ALGORITHMS", "OIDCIdentity", "OIDCVerifier"]

#: Asymmetric JWS algorithms accepted for OIDC tokens; ``none`` and HMAC never are.
ACCEPTED_OIDC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "ES256", "ES384")
_LEEWAY_SECONDS = 60
# A token whose key id is unknown triggers a JWKS reload, at most this often.
_MIN_RELOAD_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class OIDCIdentity:
    """Who a valid OIDC token names."""

    principal_id: str
    display_name: str


def _principal_id(claims: dict[str, Any], issuer: str) -> str:
    # Entra ID puts the object id in `oid`; other providers only have `sub`.  A
    # `sub` that is not a GUID is mapped to a stable name-based GUID (RFC 4122 §4.3)
    # so that every principal id stays a GUID, as EZCA's AADObjectModel expects.
    for claim in ("oid", "sub"):
        value = claims.get(claim)
        if isinstance(value, str) and value:
            try:
                return str(uuid.UUID(value))
            except ValueError:
                if claim == "sub":
                    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{issuer}#{value}"))
    raise AuthenticationError("auth.bad_token", "the bearer token names no subject")


class OIDCVerifier:
    """Checks OIDC JWTs against a configured issuer, audience and JWKS.

    Args:
        issuer: the exact ``iss`` expected.
        audience: the ``aud`` expected; several may be given separated by commas.
        jwks: a JWKS file path or an ``https://`` URL.
        verify: a CA bundle path (or ``False``) for fetching a JWKS URL.
    """

    def __init__(self, issuer: str, audience: str, jwks: str, *, verify: str | bool = True) -> None:
        self.issuer = issuer
        self.audiences = [a.strip() for a in audience.split(",") if a.strip()]
        self.jwks = jwks
        self._verify = verify
        self._lock = threading.Lock()
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._loaded_at = 0.0

    @property
    def configured(self) -> bool:
        """Whether OIDC checking is set up at all."""
        return bool(self.issuer and self.audiences and self.jwks)

    def _load(self) -> dict[str | None, jwt.PyJWK]:
        if self.jwks.startswith(("https://", "http://")):
            response = httpx.get(self.jwks, timeout=10.0, verify=self._verify)
            response.raise_for_status()
            data = response.json()
        else:
            data = json.loads(Path(self.jwks).read_text())
        keys: dict[str | None, jwt.PyJWK] = {}
        for entry in data.get("keys", []):
            try:
                key = jwt.PyJWK.from_dict(entry)
            except jwt.PyJWTError:
                continue  # keys of unsupported types are skipped, as RFC 7517 §5 allows
            keys[entry.get("kid")] = key
        return keys

    def _key_for(self, kid: str | None) -> jwt.PyJWK:
        with self._lock:
            stale = time.monotonic() - self._loaded_at > _MIN_RELOAD_SECONDS
            if (kid not in self._keys or not self._keys) and stale:
                try:
                    self._keys = self._load()
                except (OSError, ValueError, httpx.HTTPError) as exc:
                    raise AuthenticationError(
                        "auth.jwks_unavailable", "the token signing keys cannot be loaded"
                    ) from exc
                self._loaded_at = time.monotonic()
            if kid in self._keys:
                return self._keys[kid]
            if kid is None and len(self._keys) == 1:
                return next(iter(self._keys.values()))
        raise AuthenticationError("auth.bad_token", "the bearer token's signing key is unknown")

    def verify(self, token: str, *, nonce: str | None = None) -> OIDCIdentity:
        """Check a token and return who it names.

        Args:
            token: the JWT.
            nonce: for an ID token from a sign-in, the ``nonce`` it must carry
                (OpenID Connect Core 1.0 §3.1.3.7, item 11).

        Raises:
            AuthenticationError: ``auth.bad_token`` (malformed, unknown key, bad
            signature, wrong issuer or audience, expired), ``auth.oidc_disabled``,
            ``auth.jwks_unavailable``.
        """
        if not self.configured:
            raise AuthenticationError(
                "auth.oidc_disabled", "the bearer token is not a fleetpki token and OIDC is off"
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError("auth.bad_token", "the bearer token is malformed") from exc
        if header.get("alg") not in ACCEPTED_OIDC_ALGORITHMS:
            raise AuthenticationError("auth.bad_token", "the bearer token's algorithm is refused")
        key = self._key_for(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ACCEPTED_OIDC_ALGORITHMS),
                audience=self.audiences,
                issuer=self.issuer,
                leeway=_LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(
                "auth.bad_token", f"the bearer token is not valid: {type(exc).__name__}"
            ) from exc
        if nonce is not None and claims.get("nonce") != nonce:
            raise AuthenticationError("auth.bad_token", "the ID token is not for this sign-in")
        principal_id = _principal_id(claims, self.issuer)
        name = claims.get("upn") or claims.get("name") or claims.get("preferred_username")
        return OIDCIdentity(principal_id, str(name) if name else principal_id)
