"""Signing in (OIDC code flow with PKCE, or an API token) and out of the portal."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from markupsafe import escape
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleetpki.api.deps import client_source, get_fleet
from fleetpki.errors import AuthenticationError, ValidationError
from fleetpki.portal.form import Form
from fleetpki.portal.oidc_client import OIDCClient, SignInFlow
from fleetpki.portal.pages import PortalRoute, redirect, render
from fleetpki.portal.visitor import (
    OIDC_COOKIE,
    SESSION_COOKIE,
    VISITOR_COOKIE,
    checked_form,
    clear_cookie,
    current_visitor,
    set_cookie,
)
from fleetpki.services.portal_sessions import NewPortalSession

__all__ = ["router", "safe_next"]

router = APIRouter(prefix="/portal", route_class=PortalRoute, include_in_schema=False)
FormDep = Annotated[Form, Depends(checked_form)]
_CALLBACK = "/portal/signin/oidc/callback"
_FLOW_SECONDS = 600


def safe_next(value: str | None) -> str:
    """A local path to go to after sign-in: never another site (``//host``, ``\\``)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _oidc(request: Request) -> OIDCClient:
    client = request.app.state.portal_oidc
    if not isinstance(client, OIDCClient):
        raise ValidationError("portal.oidc_disabled", "sign-in with OIDC is not configured")
    return client


def _callback_url(request: Request) -> str:
    return str(request.url.replace(path=_CALLBACK, query="", fragment=""))


def _session_started(started: NewPortalSession, next_path: str, *, interstitial: bool) -> Response:
    seconds = int((started.session.expires_at - started.session.created_at).total_seconds())
    response: Response
    if interstitial:
        # Coming back from the provider is a cross-site navigation, on which the browser
        # would not send a SameSite=Strict cookie set by a redirect; a page of our own
        # that moves on (meta refresh, no script) makes the next request same-site.
        target = escape(next_path)
        response = HTMLResponse(
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="0;url={target}">'
            "<title>Signed in</title></head><body>"
            f'<p>Signed in. <a href="{target}">Continue</a></p></body></html>'
        )
    else:
        response = RedirectResponse(next_path, status_code=303)
    set_cookie(response, SESSION_COOKIE, started.secret, max_age=seconds)
    clear_cookie(response, VISITOR_COOKIE)
    return response


@router.get("/signin")
def signin_page(request: Request, next: str | None = None) -> Response:
    """The sign-in page: OIDC (when configured) and API token."""
    visitor = current_visitor(request)
    if visitor.caller is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "signin.html", next_path=safe_next(next))


@router.post("/signin/token")
def signin_with_token(request: Request, form: FormDep) -> Response:
    """Sign in with a fleetpki API token (a local install)."""
    token = form.text("token", max_length=200)
    if not token:
        raise AuthenticationError("auth.missing", "enter an API token")
    started = get_fleet(request).portal_sessions.sign_in_with_token(
        token, source=client_source(request)
    )
    return _session_started(started, safe_next(form.text("next")), interstitial=False)


@router.get("/signin/oidc")
def signin_with_oidc(request: Request, next: str | None = None) -> Response:
    """Send the browser to the provider (authorization code flow with PKCE)."""
    client = _oidc(request)
    url, flow = client.begin(_callback_url(request), safe_next(next))
    response = RedirectResponse(url, status_code=303)
    set_cookie(response, OIDC_COOKIE, flow.to_cookie(), max_age=_FLOW_SECONDS, lax=True)
    return response


@router.get("/signin/oidc/callback")
async def oidc_callback(
    request: Request,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
) -> Response:
    """The provider's answer: exchange the code, check the ID token, start the session."""
    client = _oidc(request)
    if error is not None:
        raise AuthenticationError(
            "portal.oidc_refused", f"the sign-in provider refused the sign-in ({error[:100]})"
        )
    cookie = request.cookies.get(OIDC_COOKIE)
    if not cookie or not code or not state:
        raise AuthenticationError(
            "portal.oidc_state", "the sign-in was not started here; start it again"
        )
    flow = SignInFlow.from_cookie(cookie)
    # The token exchange and the key fetch are network calls: off the event loop,
    # and before the session's unit of work.
    identity = await run_in_threadpool(
        client.finish, flow, code=code, state=state, redirect_uri=_callback_url(request)
    )
    started = await run_in_threadpool(
        get_fleet(request).portal_sessions.sign_in_with_oidc,
        identity.principal_id,
        identity.display_name,
        source=client_source(request),
    )
    response = _session_started(started, safe_next(flow.next_path), interstitial=True)
    clear_cookie(response, OIDC_COOKIE, lax=True)
    return response


@router.post("/signout")
def signout(request: Request, form: FormDep) -> Response:
    """End the session; the cookie goes with it."""
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        get_fleet(request).portal_sessions.sign_out(secret, source=client_source(request))
    response = redirect("/portal/signin", notice="signed-out")
    clear_cookie(response, SESSION_COOKIE)
    return response
