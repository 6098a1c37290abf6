"""fleetpki's own OAuth 2.0 client-credentials issuer: tokens the Azure SDKs take for Entra's.

azure-identity's ``ClientSecretCredential`` pointed at fleetpki (its ``authority`` set to
fleetpki's URL, instance discovery off) reads the tenant's OpenID configuration and
posts a client-credentials grant (RFC 6749 §4.4) to its token endpoint. This issuer
answers it for fleetpki principals: the client id is the principal's id and the client
secret is one of its API tokens, checked hashed as every API token is. The access token
is a JWT (RFC 7519) signed with ES256 by a key that fleetpki keeps in its home, shaped
like an Entra ID v2 token (``oid``, ``tid``, ``appid``), so that fleetpki's own OIDC
check accepts it on the management routes.

It is off unless ``token_endpoint_enabled`` is set: in production, tokens come from
Entra ID and this issuer is a second way in that an operator must choose.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from fleetpki.errors import AuthenticationError, NotFoundError, ValidationError
from fleetpki.keystore import load_key_file, write_key_file
from fleetpki.services.context import Clock
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.services.principals import authenticate_token_in, validate_principal_id

__all__ = [
    "CLIENT_CREDENTIALS",
    "TOKEN_LIFETIME",
    "ClientCredentialsGrant",
    "IssuedToken",
    "LocalTokenIssuer",
]

CLIENT_CREDENTIALS = "client_credentials"
#: Lifetime of an access token (Entra's default for app tokens is about an hour).
TOKEN_LIFETIME = dt.timedelta(hours=1)
_DEFAULT_SUFFIX = "/.default"
_KEY_FILE = "token-signing-key.pem"
_JWKS_FILE = "token-signing.jwks.json"


@dataclass(frozen=True, slots=True)
class ClientCredentialsGrant:
    """A token request (RFC 6749 §4.4.2) as the endpoint received it.

    Attributes:
        grant_type: must be ``client_credentials``.
        client_id: the principal's id (a GUID).
        client_secret: one of the principal's fleetpki API tokens.
        scope: ``<resource>/.default``; the token's audience is ``<resource>/``.
    """

    grant_type: str | None
    client_id: str | None
    client_secret: str | None
    scope: str | None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """An access token and what the response says about it (RFC 6749 §5.1)."""

    access_token: str
    expires_in: int
    audience: str


def _audience(scope: str | None) -> str:
    """The audience for a client-credentials scope (``https://x/.default`` → ``https://x/``)."""
    if not scope:
        raise ValidationError(
            "oauth.invalid_request", "The request body must contain the parameter 'scope'."
        )
    scopes = scope.split()
    if len(scopes) != 1 or not scopes[0].endswith(_DEFAULT_SUFFIX):
        raise ValidationError(
            "oauth.invalid_scope",
            "Client credential flows must have one scope value with /.default suffixed to "
            "the resource identifier.",
        )
    resource = scopes[0][: -len(_DEFAULT_SUFFIX)]
    if not resource or ":" not in resource:
        raise ValidationError("oauth.invalid_scope", f"The scope {scope!r} names no resource.")
    return resource if resource.endswith("/") else resource + "/"


def _jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    data = {k: str(v) for k, v in ECAlgorithm.to_jwk(public_key, as_dict=True).items()}
    # RFC 7638 thumbprint as the key id: stable for the key, different for a new one.
    canonical = json.dumps(
        {"crv": data["crv"], "kty": data["kty"], "x": data["x"], "y": data["y"]},
        separators=(",", ":"),
        sort_keys=True,
    )
    digest = jwt.utils.base64url_encode(hashlib.sha256(canonical.encode()).digest()).decode()
    return {**data, "kid": digest, "use": "sig", "alg": "ES256"}


class LocalTokenIssuer:
    """The client-credentials token endpoint of one fleetpki home.

    Args:
        store: the database (principals and their API tokens).
        clock: the source of "now".
        home: the home folder that keeps the signing key and its JWKS.
        public_url: fleetpki's base URL; the issuer is ``{public_url}/{tenant}/v2.0``.
        tenant_id: the one tenant this issuer answers for.
        enabled: whether the endpoint is served at all.
        passphrase: returns the secret that encrypts the signing key.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        home: Path,
        public_url: str,
        tenant_id: str,
        enabled: bool,
        passphrase: Callable[[], bytes],
    ) -> None:
        self._store = store
        self._clock = clock
        self._home = home
        self._base = public_url.rstrip("/")
        self.tenant_id = tenant_id
        self.enabled = enabled
        self._passphrase = passphrase
        self._lock = threading.Lock()
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._kid = ""

    # -- what the discovery documents say ---------------------------------------------------

    @property
    def issuer(self) -> str:
        """The ``iss`` of every token (Entra v2's form, ``https://host/{tenant}/v2.0``)."""
        return f"{self._base}/{self.tenant_id}/v2.0"

    @property
    def jwks_path(self) -> Path:
        """The JWKS file of the signing key, for an :class:`OIDCVerifier`."""
        return self._home / _JWKS_FILE

    def _check_tenant(self, tenant: str) -> None:
        if not self.enabled:
            raise NotFoundError("oauth.disabled", "the token endpoint is not enabled")
        if tenant.lower() != self.tenant_id.lower():
            raise ValidationError(
                "oauth.invalid_tenant", f"Tenant '{tenant}' not found. Use {self.tenant_id}."
            )

    def openid_configuration(self, tenant: str) -> dict[str, Any]:
        """The tenant's OpenID Provider metadata (OpenID Connect Discovery 1.0 §3).

        MSAL needs ``authorization_endpoint`` and ``token_endpoint``; only the token
        endpoint is served (there is no interactive sign-in).

        Raises:
            NotFoundError: ``oauth.disabled``.
            ValidationError: ``oauth.invalid_tenant``.
        """
        self._check_tenant(tenant)
        base = f"{self._base}/{self.tenant_id}"
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "grant_types_supported": [CLIENT_CREDENTIALS],
            "response_types_supported": ["token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "scopes_supported": ["https://management.azure.com/.default"],
            "claims_supported": ["iss", "aud", "sub", "oid", "tid", "appid", "azp", "exp"],
            "tenant_region_scope": None,
            "cloud_instance_name": "fleetpki",
        }

    def jwks(self, tenant: str) -> dict[str, Any]:
        """The public signing keys (RFC 7517 §5).

        Raises:
            NotFoundError: ``oauth.disabled``.
            ValidationError: ``oauth.invalid_tenant``.
        """
        self._check_tenant(tenant)
        self._signing_key()
        return dict(json.loads(self.jwks_path.read_text()))

    # -- the key ----------------------------------------------------------------------------

    def _signing_key(self) -> tuple[ec.EllipticCurvePrivateKey, str]:
        """Load the signing key, creating it and its JWKS file on first use."""
        with self._lock:
            if self._key is not None:
                return self._key, self._kid
            path = self._home / _KEY_FILE
            secret = self._passphrase()
            if not path.exists():
                self._create_key(path, secret)
            # A key file of an older, weaker form is re-encrypted as it is loaded.
            key = load_key_file(path, secret, what="token signing key")
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValidationError("oauth.bad_key", f"{path} is not an EC key")
            jwk = _jwk(key.public_key())
            # Written each time the key is loaded so that a JWKS file lost or left from
            # an older key is put right; other processes read it to check tokens.
            tmp = self.jwks_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
            tmp.replace(self.jwks_path)
            self._key, self._kid = key, jwk["kid"]
            return key, self._kid

    @staticmethod
    def _create_key(path: Path, secret: bytes) -> None:
        # Another process may have made it first: that one is used.
        with contextlib.suppress(FileExistsError):
            write_key_file(path, ec.generate_private_key(ec.SECP256R1()), secret)

    # -- the grant --------------------------------------------------------------------------

    def issue(self, tenant: str, grant: ClientCredentialsGrant) -> IssuedToken:
        """Answer a client-credentials grant with a signed access token.

        Raises:
            NotFoundError: ``oauth.disabled``.
            ValidationError: ``oauth.invalid_tenant``, ``oauth.invalid_request``,
                ``oauth.unsupported_grant_type``, ``oauth.invalid_scope``.
            AuthenticationError: ``oauth.invalid_client`` for an unknown client, a wrong,
                expired or revoked secret, or the secret of another principal.
        """
        self._check_tenant(tenant)
        if not grant.grant_type:
            raise ValidationError(
                "oauth.invalid_request", "The request body must contain the parameter 'grant_type'."
            )
        if grant.grant_type != CLIENT_CREDENTIALS:
            raise ValidationError(
                "oauth.unsupported_grant_type",
                f"The grant type {grant.grant_type!r} is not supported; use client_credentials.",
            )
        audience = _audience(grant.scope)
        if not grant.client_id or not grant.client_secret:
            raise AuthenticationError(
                "oauth.invalid_client", "The request must carry client_id and client_secret."
            )
        now = self._clock()
        with self._store.transaction() as tx:
            principal_id, name = self._authenticate(tx, grant.client_id, grant.client_secret)
        key, kid = self._signing_key()
        claims = {
            "iss": self.issuer,
            "aud": audience,
            "sub": principal_id,
            "oid": principal_id,
            "tid": self.tenant_id,
            "appid": principal_id,
            "azp": principal_id,
            "idtyp": "app",
            "name": name,
            "ver": "2.0",
            "jti": str(uuid.uuid4()),
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + TOKEN_LIFETIME).timestamp()),
        }
        token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": "JWT"})
        return IssuedToken(token, int(TOKEN_LIFETIME.total_seconds()) - 1, audience)

    def _authenticate(self, tx: UnitOfWork, client_id: str, secret: str) -> tuple[str, str]:
        try:
            wanted = validate_principal_id(client_id)
            holder = authenticate_token_in(tx, secret, now=self._clock())
        except (ValidationError, AuthenticationError) as exc:
            raise AuthenticationError(
                "oauth.invalid_client", "The client id or client secret is not valid."
            ) from exc
        if holder.principal_id != wanted:
            raise AuthenticationError(
                "oauth.invalid_client", "The client id or client secret is not valid."
            )
        return holder.principal_id, holder.friendly_name
