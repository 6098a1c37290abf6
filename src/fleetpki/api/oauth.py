"""fleetpki's client-credentials token endpoint at Entra ID's paths (off unless enabled).

The routes only translate: OpenID discovery, the JWKS and the token grant are
:class:`fleetpki.services.token_issuer.LocalTokenIssuer`'s; errors are OAuth's
``{"error", "error_description"}`` (RFC 6749 §5.2), which MSAL shows to the caller.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated
from urllib.parse import parse_qs, unquote_plus

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from fleetpki.api.deps import get_fleet
from fleetpki.application import FleetPKI
from fleetpki.errors import AuthenticationError, FleetPKIError, NotFoundError
from fleetpki.services.token_issuer import ClientCredentialsGrant

__all__ = ["router"]

router = APIRouter(tags=["oauth"], include_in_schema=False)
Fleet = Annotated[FleetPKI, Depends(get_fleet)]
# RFC 6749 §5.1: token responses must not be cached.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(error: FleetPKIError, *, basic: bool = False) -> JSONResponse:
    """RFC 6749 §5.2: 401 for ``invalid_client``, 400 for the rest; 404 when disabled."""
    if isinstance(error, NotFoundError):
        return JSONResponse(
            {"error": "not_found", "error_description": error.message}, status_code=404
        )
    oauth = error.code.startswith("oauth.")
    name = error.code.removeprefix("oauth.") if oauth else "invalid_request"
    status = 401 if isinstance(error, AuthenticationError) else 400
    headers = dict(_NO_STORE)
    if status == 401:
        scheme = "Basic" if basic else "Bearer"
        headers["WWW-Authenticate"] = f'{scheme} realm="fleetpki"'
    return JSONResponse(
        {"error": name, "error_description": error.message}, status_code=status, headers=headers
    )


@router.get("/{tenant}/v2.0/.well-known/openid-configuration")
def openid_configuration(tenant: str, fleet: Fleet) -> JSONResponse:
    """The tenant's OpenID Provider metadata, as MSAL's tenant discovery reads it."""
    try:
        return JSONResponse(fleet.token_issuer.openid_configuration(tenant))
    except FleetPKIError as exc:
        return _oauth_error(exc)


@router.get("/{tenant}/discovery/v2.0/keys")
def signing_keys(tenant: str, fleet: Fleet) -> JSONResponse:
    """The public keys that sign the tokens (RFC 7517 §5)."""
    try:
        return JSONResponse(fleet.token_issuer.jwks(tenant))
    except FleetPKIError as exc:
        return _oauth_error(exc)


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1: ``client_id:client_secret``, each form-encoded, in HTTP Basic."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (unquote_plus(client_id), unquote_plus(secret)) if sep else None


@router.post("/{tenant}/oauth2/v2.0/token")
async def token(tenant: str, request: Request, fleet: Fleet) -> JSONResponse:
    """The token endpoint: the client-credentials grant (RFC 6749 §4.4)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
    basic = _basic_credentials(request)
    client_id, secret = basic if basic is not None else (form.get("client_id"), None)
    grant = ClientCredentialsGrant(
        grant_type=form.get("grant_type"),
        client_id=client_id or form.get("client_id"),
        client_secret=secret or form.get("client_secret"),
        scope=form.get("scope"),
    )
    try:
        issued = await run_in_threadpool(fleet.token_issuer.issue, tenant, grant)
    except FleetPKIError as exc:
        return _oauth_error(exc, basic=basic is not None)
    return JSONResponse(
        {
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "ext_expires_in": issued.expires_in,
            "access_token": issued.access_token,
        },
        headers=_NO_STORE,
    )
