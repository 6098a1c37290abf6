"""Who is at the browser: the session cookie, the caller it stands for, and the CSRF check.

Cookies are ``__Host-`` prefixed (Secure, ``Path=/``, no ``Domain``), HttpOnly and
``SameSite=Strict``: the session (``__Host-fleetpki-session``), and for a browser not
signed in a random visitor secret (``__Host-fleetpki-visitor``) that the sign-in forms'
CSRF token is derived from. The OIDC flow's state is kept in ``__Host-fleetpki-oidc``,
``SameSite=Lax`` since the provider sends the browser back from another site.

Every form carries a CSRF token, an HMAC of the cookie's secret
(:func:`fleetpki.services.portal_sessions.csrf_token_for`); a POST whose token is
missing or does not match is refused with 403 before any service is called.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from fleetpki.api.deps import client_source, get_fleet
from fleetpki.errors import AuthenticationError, PermissionDenied
from fleetpki.portal.form import Form, read_form
from fleetpki.services.context import Actor
from fleetpki.services.portal_sessions import PortalSessionView, csrf_token_for

__all__ = [
    "OIDC_COOKIE",
    "SESSION_COOKIE",
    "VISITOR_COOKIE",
    "Caller",
    "SignInRequired",
    "Visitor",
    "checked_form",
    "clear_cookie",
    "current_visitor",
    "require_admin",
    "set_cookie",
    "signed_in",
]

SESSION_COOKIE = "__Host-fleetpki-session"
VISITOR_COOKIE = "__Host-fleetpki-visitor"
OIDC_COOKIE = "__Host-fleetpki-oidc"
CSRF_FIELD = "csrf_token"


class SignInRequired(AuthenticationError):
    """The page needs a signed-in caller; the portal answers with the sign-in page."""


@dataclass(frozen=True, slots=True)
class Caller:
    """A signed-in caller: the actor for use cases, and the session."""

    actor: Actor
    session: PortalSessionView

    @property
    def display_name(self) -> str:
        """The principal's friendly name."""
        return self.session.principal.friendly_name

    @property
    def is_admin(self) -> bool:
        """Whether the caller is an administrator (sees and acts on everything)."""
        return self.actor.is_admin


@dataclass(frozen=True, slots=True)
class Visitor:
    """The browser of this request.

    Attributes:
        secret: the secret of its session or visitor cookie (the CSRF token's key).
        caller: the signed-in caller, if any.
        new_visitor_secret: a visitor secret made for this request, to be set.
        drop_session: the session cookie named no live session: clear it.
    """

    secret: str
    caller: Caller | None
    new_visitor_secret: str | None = None
    drop_session: bool = False

    @property
    def csrf_token(self) -> str:
        """The token every form of this browser carries."""
        return csrf_token_for(self.secret)


def set_cookie(
    response: Response, name: str, value: str, *, max_age: int | None, lax: bool = False
) -> None:
    """Set one of the portal's cookies: Secure, HttpOnly, ``Path=/``, SameSite."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=True,
        httponly=True,
        samesite="lax" if lax else "strict",
    )


def clear_cookie(response: Response, name: str, *, lax: bool = False) -> None:
    """Remove one of the portal's cookies."""
    response.delete_cookie(
        name, path="/", secure=True, httponly=True, samesite="lax" if lax else "strict"
    )


def _resolve(request: Request) -> Visitor:
    fleet = get_fleet(request)
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        try:
            session = fleet.portal_sessions.resume(secret)
        except AuthenticationError:
            pass
        else:
            principal = session.principal
            actor = Actor(principal.id, principal.is_admin, client_source(request))
            return Visitor(secret, Caller(actor, session))
    visitor = request.cookies.get(VISITOR_COOKIE)
    if visitor and 20 <= len(visitor) <= 100:
        return Visitor(visitor, None, drop_session=bool(secret))
    fresh = secrets.token_urlsafe(32)
    return Visitor(fresh, None, new_visitor_secret=fresh, drop_session=bool(secret))


def current_visitor(request: Request) -> Visitor:
    """The browser of this request, resolved once (a FastAPI dependency)."""
    visitor = getattr(request.state, "portal_visitor", None)
    if not isinstance(visitor, Visitor):
        visitor = _resolve(request)
        request.state.portal_visitor = visitor
    return visitor


def signed_in(request: Request) -> Caller:
    """The signed-in caller (a FastAPI dependency).

    Raises:
        SignInRequired: ``portal.signed_out``; the portal shows the sign-in page.
    """
    caller = current_visitor(request).caller
    if caller is None:
        raise SignInRequired("portal.signed_out", "sign in to see this page")
    return caller


def require_admin(caller: Caller) -> None:
    """Refuse a caller who is not an administrator, as the API's admin-only routes do.

    Raises:
        PermissionDenied: ``auth.admin_required`` (403).
    """
    if not caller.is_admin:
        raise PermissionDenied("auth.admin_required", "only admins may do this")


def _csrf_matches(visitor: Visitor, form: Mapping[str, list[str]]) -> bool:
    sent = form.get(CSRF_FIELD) or []
    return len(sent) == 1 and hmac.compare_digest(sent[0].encode(), visitor.csrf_token.encode())


async def checked_form(request: Request) -> Form:
    """The request's form, once its CSRF token matched this browser (a FastAPI dependency).

    Raises:
        PermissionDenied: ``portal.csrf_missing`` without a token, ``portal.csrf_mismatch``
            with another browser's (or an old session's) token; nothing is done then.
        ValidationError: the form's own codes (:func:`fleetpki.portal.form.read_form`).
    """
    form = await read_form(request)
    visitor = await run_in_threadpool(current_visitor, request)
    if not form.values(CSRF_FIELD):
        raise PermissionDenied(
            "portal.csrf_missing", "the form has no CSRF token; reload the page and try again"
        )
    if not _csrf_matches(visitor, form.fields):
        raise PermissionDenied(
            "portal.csrf_mismatch",
            "the form's CSRF token is not this session's; reload the page and try again",
        )
    return form
