"""Rendering portal pages: the Jinja2 environment, the security headers, errors as pages.

Every portal route is a :class:`PortalRoute`: what a service refuses (a
:class:`~fleetpki.errors.FleetPKIError`) becomes a page with the same status, code and
message the API answers with, never a stack trace; a page that needs a signed-in
caller answers with the sign-in page's address. Every answer carries the portal's
Content-Security-Policy, which allows no inline script or style at all.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from markupsafe import Markup
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleetpki.api.deps import get_fleet
from fleetpki.api.problems import count_refusal
from fleetpki.errors import FleetPKIError, http_status_for
from fleetpki.portal.visitor import (
    SESSION_COOKIE,
    VISITOR_COOKIE,
    SignInRequired,
    clear_cookie,
    current_visitor,
    set_cookie,
)

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "NOTICES",
    "PAGE_SIZE",
    "Page",
    "PortalRoute",
    "Renderer",
    "page_of",
    "redirect",
    "render",
]

_log = logging.getLogger("fleetpki.portal")

#: Rows per table page; one more is asked for, to know whether a next page exists.
PAGE_SIZE = 50

#: No inline script or style, nothing from elsewhere, no framing, forms only to us.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

#: What a finished action says on the page it leads to (``?notice=``); only these
#: fixed sentences are ever shown, so the query cannot put words on the page.
NOTICES: Mapping[str, str] = {
    "domain-registered": "The domain is registered.",
    "members-saved": "The domain's owners and requesters are saved.",
    "revoked": "The certificate is revoked.",
    "link-added": "The hub link is added.",
    "link-removed": "The hub link is removed.",
    "trusted": "The CA is trusted in the hub: its certificate is uploaded and verified.",
    "options-saved": "The link's options are saved.",
    "retried": "The failed deliveries are queued again.",
    "renewed": "The CA has a new generation.",
    "activated": "The pending generation is active.",
    "sent": "The cloud-to-device message is queued.",
    "signed-out": "You are signed out.",
}

_TEMPLATES = Path(__file__).parent / "templates"


def _utc_text(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _time(value: dt.datetime | None) -> Markup:
    """A ``<time>`` element: UTC in the page and its title; portal.js shows local time."""
    if value is None:
        return Markup('<span class="muted">never</span>')
    iso = value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = _utc_text(value)
    return Markup('<time datetime="{0}" title="{1}" data-local>{1}</time>').format(iso, text)


def _days_until(value: dt.datetime, now: dt.datetime) -> int:
    return (value - now).days


class Renderer:
    """The portal's Jinja2 environment (autoescaped), built once per application."""

    def __init__(self) -> None:
        self.environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_TEMPLATES),
            autoescape=jinja2.select_autoescape(("html",)),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.environment.filters["time"] = _time
        self.environment.filters["utc"] = _utc_text
        self.environment.globals["days_until"] = _days_until
        self.environment.globals["quote"] = quote

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        """The page ``name`` rendered with ``context``."""
        return self.environment.get_template(name).render(context)


def _renderer(request: Request) -> Renderer:
    renderer = request.app.state.portal_renderer
    assert isinstance(renderer, Renderer)
    return renderer


def _finish(request: Request, response: Response) -> Response:
    """Set the visitor's cookies and the security headers on a portal answer."""
    visitor = getattr(request.state, "portal_visitor", None)
    if visitor is not None:
        if visitor.new_visitor_secret is not None:
            set_cookie(response, VISITOR_COOKIE, visitor.new_visitor_secret, max_age=None)
        if visitor.drop_session:
            clear_cookie(response, SESSION_COOKIE)
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.media_type is None or response.media_type.startswith("text/html"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def render(request: Request, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
    """A portal page: ``template`` with the visitor, the CSRF token and ``context``."""
    visitor = current_visitor(request)
    fleet = get_fleet(request)
    notice = request.query_params.get("notice")
    values = {
        "request": request,
        "path": request.url.path,
        "caller": visitor.caller,
        "csrf_token": visitor.csrf_token,
        "now": fleet.now(),
        "notice": NOTICES.get(notice or ""),
        "oidc_enabled": bool(request.app.state.portal_oidc is not None),
        **context,
    }
    return HTMLResponse(_renderer(request).render(template, values), status_code=status)


def redirect(
    path: str, *, notice: str | None = None, _anchor: str | None = None, **query: str
) -> RedirectResponse:
    """A 303 to ``path`` (after a form), optionally with one of :data:`NOTICES`."""
    params = {k: v for k, v in query.items() if v}
    if notice is not None:
        assert notice in NOTICES
        params["notice"] = notice
    target = f"{path}?{urlencode(params)}" if params else path
    if _anchor:
        target += "#" + quote(_anchor)
    return RedirectResponse(target, status_code=303)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a table: its rows, and the links to the pages around it."""

    rows: list[Any]
    number: int
    has_next: bool
    previous_url: str | None
    next_url: str | None


def page_of(request: Request, rows: list[Any], number: int) -> Page:
    """The page ``number`` (from 0) of rows asked for as ``PAGE_SIZE + 1`` from its offset."""
    has_next = len(rows) > PAGE_SIZE

    def url(n: int) -> str:
        params = dict(request.query_params)
        params.pop("notice", None)
        params["page"] = str(n)
        return f"{request.url.path}?{urlencode(params)}"

    return Page(
        rows=rows[:PAGE_SIZE],
        number=number,
        has_next=has_next,
        previous_url=url(number - 1) if number > 0 else None,
        next_url=url(number + 1) if has_next else None,
    )


def _error_page(request: Request, error: FleetPKIError, status: int) -> Response:
    count_refusal(request.app, error.code)
    try:
        return render(request, "error.html", status=status, error=error, status_code=status)
    except Exception:  # the page itself failed: a plain answer, still without internals
        _log.exception("the portal's error page failed for %s", error.code)
        return HTMLResponse(f"{status} {error.code}", status_code=status)


def _sign_in_redirect(request: Request) -> Response:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    if request.method != "GET":
        target = "/"
    return RedirectResponse("/portal/signin?" + urlencode({"next": target}), status_code=303)


class PortalRoute(APIRoute):
    """A portal route: refusals become pages, every answer gets the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler so that no error reaches the API's JSON handlers."""
        handler = super().get_route_handler()

        async def portal_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired:
                response = _sign_in_redirect(request)
            except FleetPKIError as exc:
                response = _error_page(request, exc, http_status_for(exc))
            except RequestValidationError as exc:
                fields = ", ".join(
                    ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "path"))
                    for e in exc.errors()[:5]
                )
                error = FleetPKIError("request.invalid", f"the request is invalid: {fields}")
                response = _error_page(request, error, 422)
            return _finish(request, response)

        return portal_handler
