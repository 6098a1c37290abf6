"""The FastAPI application: routers, error rendering, body limit, health and metrics."""

from __future__ import annotations

import importlib

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetpki import __version__
from fleetpki.api.asgi_body import replay
from fleetpki.api.deps import get_fleet, get_metrics
from fleetpki.api.error_formats import (
    ErrorBoundaryMiddleware,
    error_response,
    is_arm_path,
    is_dps_path,
    is_hub_service_path,
)
from fleetpki.api.issuance_fast_path import IssuanceFastPath
from fleetpki.api.metrics import METRICS_CONTENT_TYPE, LatencyMiddleware, Metrics
from fleetpki.api.oidc import OIDCVerifier
from fleetpki.api.problems import (
    count_refusal,
    fleetpki_error_handler,
    http_error,
    http_exception_handler,
    validation_error_handler,
)
from fleetpki.application import FleetPKI
from fleetpki.errors import FleetPKIError, ValidationError

__all__ = ["MAX_BODY_BYTES", "BodyLimitMiddleware", "create_app"]

#: Request bodies larger than this are refused with 413 ``request.too_large``.
MAX_BODY_BYTES = 1_000_000

# Modules whose ``router`` the application includes; add a module here to add routes.
_ROUTERS: tuple[str, ...] = (
    "fleetpki.api.ezca",
    "fleetpki.api.v1",
    "fleetpki.api.ca_lifecycle",
    "fleetpki.api.hub_service",
    "fleetpki.api.hub_v1",
    "fleetpki.api.hub_links",
    "fleetpki.api.status",
    "fleetpki.api.est",
    "fleetpki.api.hub_websocket",
    "fleetpki.api.amqp_websocket",
    "fleetpki.api.arm",
    "fleetpki.api.oauth",
    # Last: its runtime routes start with a path parameter (the ID scope).
    "fleetpki.api.dps",
)


class BodyLimitMiddleware:
    """Refuse request bodies over a limit with 413, by ``Content-Length`` or chunked.

    A body with a ``Content-Length`` is refused from the header alone. A chunked one
    (no ``Content-Length``) is read here, up to the limit, before the route runs: a
    route that read it itself would fail mid-parse with a 400, and docs/api.md
    promises 413 for both. Once the limit is passed nothing more is read, so the
    answer closes the connection.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 413 when its body is over the limit."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._refuse(scope, send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away before its body ended; the route sees that.
                await self.app(scope, replay([message], receive), send)
                return
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                await self._refuse(scope, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, replay([whole], receive), send)

    def _message(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"

    async def _refuse(self, scope: Scope, send: Send) -> None:
        error = ValidationError("request.too_large", self._message())
        count_refusal(scope.get("app"), error.code)
        response = error_response(
            str(scope.get("path", "")), error, headers={"Connection": "close"}
        )
        await response(scope, _drain, send)


async def _drain() -> Message:
    return {"type": "http.disconnect"}


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own HTTP errors (no route, wrong method), in the path's error format."""
    assert isinstance(exc, StarletteHTTPException)
    path = request.url.path
    if is_hub_service_path(path) or is_arm_path(path) or is_dps_path(path):
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        error = http_error(exc.status_code, detail)
        count_refusal(request.app, error.code)
        return error_response(path, error)
    return await http_exception_handler(request, exc)


def _health(request: Request) -> dict[str, str]:
    """Liveness and database reachability."""
    get_fleet(request).store.ping()
    return {"status": "ok", "version": __version__}


def _metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    return Response(get_metrics(request).render(), media_type=METRICS_CONTENT_TYPE)


def create_app(fleet: FleetPKI, *, oidc: OIDCVerifier | None = None) -> FastAPI:
    """Build the HTTP application for one fleetpki instance.

    Args:
        fleet: the opened instance the routes run against.
        oidc: the OIDC verifier; by default one built from the settings.
    """
    settings = fleet.settings
    app = FastAPI(
        title="fleetpki",
        version=__version__,
        description="A self-hosted CA for IoT fleets: EZCA-compatible routes and a native /v1 API.",
    )
    app.state.fleet = fleet
    app.state.oidc = oidc or OIDCVerifier(
        settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks
    )
    metrics = Metrics(fleet)
    app.state.metrics = metrics
    app.add_exception_handler(FleetPKIError, fleetpki_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    # Innermost first: API-token issuance skips the framework (see IssuanceFastPath), and
    # the boundary sees every exception the routes and it let through.
    app.add_middleware(
        IssuanceFastPath, fleet=fleet, metrics=metrics, max_body_bytes=MAX_BODY_BYTES
    )
    app.add_middleware(ErrorBoundaryMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    # OCSP answers from memory skip the framework: the server runs the app behind
    # fleetpki.api.status.OcspFastPath (OcspFastPath.around, api/server.py).
    app.add_api_route("/healthz", _health, methods=["GET"], tags=["operations"])
    app.add_api_route(
        "/metrics", _metrics, methods=["GET"], tags=["operations"], response_class=Response
    )
    for module_name in _ROUTERS:
        router = importlib.import_module(module_name).router
        assert isinstance(router, APIRouter)
        app.include_router(router)
    # The web portal: ``/`` and ``/portal/``. Imported here: the portal's modules use the
    # API's dependencies (fleetpki.api.deps), so importing it at the top would be circular.
    from fleetpki.portal import include_portal

    include_portal(app, fleet)
    return app
