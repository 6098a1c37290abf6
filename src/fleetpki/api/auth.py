"""Caller authentication: ``Authorization: Bearer`` with fleetpki API tokens or OIDC JWTs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from fastapi import Request

from fleetpki.api.deps import client_source, get_fleet
from fleetpki.api.oidc import OIDCVerifier
from fleetpki.errors import AuthenticationError, PermissionDenied
from fleetpki.services import Actor
from fleetpki.services.principals import TOKEN_PREFIX

__all__ = [
    "Caller",
    "bearer_token",
    "caller_for_token",
    "require_admin",
    "require_bearer",
    "require_caller",
]


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: the actor for use cases and a display name."""

    actor: Actor
    display_name: str


def bearer_token(request: Request) -> str:
    """The credentials of an ``Authorization: Bearer`` header.

    Raises:
        AuthenticationError: ``auth.missing`` without the header, ``auth.bad_scheme``
        for another scheme or an empty token.
    """
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationError("auth.missing", "this route needs an Authorization: Bearer token")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise AuthenticationError("auth.bad_scheme", "use Authorization: Bearer <token>")
    return credentials.strip()


async def require_bearer(request: Request) -> str:
    """The bearer credentials, checked for their form only (an async FastAPI dependency).

    For routes that authenticate in the same worker-thread hop as their use case
    (:func:`fleetpki.api.deps.in_writer_thread`): a request without credentials is
    refused before its body is read, as with :func:`require_caller`.

    Raises:
        AuthenticationError: as :func:`bearer_token`.
    """
    return bearer_token(request)


def require_caller(request: Request) -> Caller:
    """Authenticate the caller (a FastAPI dependency).

    A token with the ``fpk_`` prefix is a fleetpki API token; anything else is
    taken for an OIDC JWT, and a principal seen for the first time is created.

    Raises:
        AuthenticationError: 401 for missing or bad credentials.
    """
    return caller_for_token(request, bearer_token(request))


def caller_for_token(request: Request, token: str) -> Caller:
    """The caller a bearer credential (API token or OIDC JWT) stands for.

    Raises:
        AuthenticationError: 401 for bad credentials.
    """
    fleet = get_fleet(request)
    if token.startswith(TOKEN_PREFIX):
        principal = fleet.principals.authenticate_token(token)
    else:
        # The JWKS may be fetched over the network: before any unit of work opens.
        identity = cast(OIDCVerifier, request.app.state.oidc).verify(token)
        principal = fleet.principals.ensure(identity.principal_id, identity.display_name)
    actor = Actor(
        principal_id=principal.id, is_admin=principal.is_admin, source=client_source(request)
    )
    return Caller(actor=actor, display_name=principal.friendly_name)


def require_admin(request: Request) -> Caller:
    """Authenticate the caller and require an admin (a FastAPI dependency).

    Raises:
        AuthenticationError: 401.
        PermissionDenied: ``auth.admin_required`` (403).
    """
    caller = require_caller(request)
    if not caller.actor.is_admin:
        raise PermissionDenied("auth.admin_required", "only admins may do this")
    return caller
