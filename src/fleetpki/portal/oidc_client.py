"""The portal's OpenID Connect client: authorization code flow with PKCE (RFC 7636).

The provider is the API's (``oidc_issuer``, Entra ID in production); the portal is a
client of it (``portal_oidc_client_id``). Sign-in sends the browser to the provider's
authorization endpoint with a ``state``, a ``nonce`` and an S256 code challenge; the
callback exchanges the code with the verifier at the token endpoint and checks the ID
token (signature by the provider's keys, issuer, audience = the client id, expiry and
the nonce) with the API's :class:`~fleetpki.api.oidc.OIDCVerifier`, so a principal
signs in to the portal as the same principal the API knows. Every call to the provider
is made before any unit of work opens.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx

from fleetpki.api.oidc import OIDCIdentity, OIDCVerifier
from fleetpki.errors import AuthenticationError, ValidationError
from fleetpki.settings import Settings

__all__ = ["OIDCClient", "SignInFlow", "oidc_client_for"]

_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class SignInFlow:
    """What the browser keeps (in a cookie) between leaving for the provider and coming back."""

    state: str
    nonce: str
    verifier: str
    next_path: str

    def to_cookie(self) -> str:
        """The flow as a cookie value."""
        raw = json.dumps([self.state, self.nonce, self.verifier, self.next_path]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def from_cookie(cls, value: str) -> SignInFlow:
        """The flow a cookie value holds.

        Raises:
            AuthenticationError: ``portal.oidc_state`` for a value that is not one.
        """
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            state, nonce, verifier, next_path = json.loads(raw)
        except (ValueError, TypeError) as exc:
            raise AuthenticationError(
                "portal.oidc_state", "the sign-in was not started here; start it again"
            ) from exc
        if not all(isinstance(v, str) for v in (state, nonce, verifier, next_path)):
            raise AuthenticationError(
                "portal.oidc_state", "the sign-in was not started here; start it again"
            )
        return cls(state, nonce, verifier, next_path)


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class OIDCClient:
    """An OIDC relying party for one provider and client id.

    Args:
        issuer: the provider's issuer URL; its discovery document is
            ``{issuer}/.well-known/openid-configuration``.
        client_id: the portal's client id at the provider.
        client_secret: for a confidential client; PKCE is used either way.
        scopes: the scopes asked for (``openid`` always among them).
        jwks: the provider's keys (file or URL); by default the discovery's ``jwks_uri``.
        verify: a CA bundle path (or ``True``) for reaching the provider.
    """

    def __init__(
        self,
        issuer: str,
        client_id: str,
        *,
        client_secret: str | None = None,
        scopes: str = "openid profile",
        jwks: str = "",
        verify: str | bool = True,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self._secret = client_secret
        names = scopes.split()
        self.scopes = " ".join(["openid", *[s for s in names if s != "openid"]])
        self._jwks = jwks
        self._verify = verify
        self._lock = threading.Lock()
        self._metadata: dict[str, str] | None = None
        self._verifier: OIDCVerifier | None = None

    def _discover(self) -> dict[str, str]:
        with self._lock:
            if self._metadata is not None:
                return self._metadata
        url = f"{self.issuer}/.well-known/openid-configuration"
        try:
            response = httpx.get(url, timeout=_TIMEOUT, verify=self._verify)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise AuthenticationError(
                "portal.oidc_unavailable", "the sign-in provider cannot be reached; try later"
            ) from exc
        needed = ("authorization_endpoint", "token_endpoint", "jwks_uri")
        if not isinstance(document, dict) or not all(
            isinstance(document.get(k), str) for k in needed
        ):
            raise AuthenticationError(
                "portal.oidc_unavailable", "the sign-in provider's configuration is incomplete"
            )
        issuer = document.get("issuer")
        # OpenID Connect Discovery 1.0 §4.3: the document's issuer is the one asked for.
        if not isinstance(issuer, str) or issuer.rstrip("/") != self.issuer:
            raise AuthenticationError(
                "portal.oidc_unavailable", "the sign-in provider names another issuer"
            )
        metadata = {k: str(document[k]) for k in needed}
        with self._lock:
            self._metadata = metadata
            self._verifier = OIDCVerifier(
                issuer,
                self.client_id,
                self._jwks or metadata["jwks_uri"],
                verify=self._verify,
            )
        return metadata

    def begin(self, redirect_uri: str, next_path: str) -> tuple[str, SignInFlow]:
        """The provider's authorization URL to send the browser to, and the flow to keep.

        Raises:
            AuthenticationError: ``portal.oidc_unavailable``.
        """
        metadata = self._discover()
        flow = SignInFlow(
            state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            verifier=secrets.token_urlsafe(48),
            next_path=next_path,
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": self.scopes,
                "state": flow.state,
                "nonce": flow.nonce,
                "code_challenge": _challenge(flow.verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = metadata["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", flow

    def finish(self, flow: SignInFlow, *, code: str, state: str, redirect_uri: str) -> OIDCIdentity:
        """Exchange the code the provider sent back and check the ID token.

        Raises:
            AuthenticationError: ``portal.oidc_state`` when ``state`` is not the flow's,
                ``portal.oidc_refused`` when the provider refuses the code,
                ``auth.bad_token`` for an ID token that fails a check.
        """
        if not secrets.compare_digest(state.encode(), flow.state.encode()):
            raise AuthenticationError(
                "portal.oidc_state", "the sign-in answer is not for this browser; start again"
            )
        metadata = self._discover()
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": flow.verifier,
            "client_id": self.client_id,
        }
        auth = (self.client_id, self._secret) if self._secret else None
        try:
            response = httpx.post(
                metadata["token_endpoint"],
                data=data,
                auth=auth,
                timeout=_TIMEOUT,
                verify=self._verify,
                headers={"Accept": "application/json"},
            )
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise AuthenticationError(
                "portal.oidc_unavailable", "the sign-in provider cannot be reached; try later"
            ) from exc
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise AuthenticationError(
                "portal.oidc_refused",
                f"the sign-in provider refused the sign-in ({error or response.status_code})",
            )
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise AuthenticationError("portal.oidc_refused", "the provider sent no ID token")
        verifier = self._verifier
        assert verifier is not None
        return verifier.verify(id_token, nonce=flow.nonce)


def oidc_client_for(settings: Settings) -> OIDCClient | None:
    """The portal's OIDC client the settings describe, or ``None`` when sign-in by OIDC is off.

    Raises:
        ValidationError: ``config.invalid`` for a client id without an issuer, or a
            secret file that cannot be read.
    """
    if not settings.portal_oidc_client_id:
        return None
    if not settings.oidc_issuer:
        raise ValidationError(
            "config.invalid", "portal_oidc_client_id is set but oidc_issuer is not"
        )
    secret = None
    if settings.portal_oidc_client_secret_file:
        try:
            secret = Path(settings.portal_oidc_client_secret_file).read_text().strip()
        except OSError as exc:
            raise ValidationError(
                "config.invalid",
                f"portal_oidc_client_secret_file {settings.portal_oidc_client_secret_file} "
                f"cannot be read: {exc.strerror}",
            ) from exc
    return OIDCClient(
        settings.oidc_issuer,
        settings.portal_oidc_client_id,
        client_secret=secret,
        scopes=settings.portal_oidc_scopes,
        jwks=settings.oidc_jwks,
    )
