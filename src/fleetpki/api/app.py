"""The FastAPI application: routers, error rendering, body limit, health and metrics."""

from __future__ import annotations

import importlib

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetpki import __version__
from fleetpki.api.deps import get_fleet, get_metrics
from fleetpki.api.metrics import METRICS_CONTENT_TYPE, LatencyMiddleware, Metrics
from fleetpki.api.oidc import OIDCVerifier
from fleetpki.api.problems import (
    PROBLEM_CONTENT_TYPE,
    fleetpki_error_handler,
    http_exception_handler,
    problem_body,
    unexpected_error_handler,
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
    "fleetpki.api.arm",
    "fleetpki.api.oauth",
)


class BodyLimitMiddleware:
    """Refuse request bodies over a limit, by ``Content-Length`` or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise ValidationError("request.too_large", self._message())
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"

    async def _refuse(self, scope: Scope, send: Send) -> None:
        path = str(scope.get("path", ""))
        metrics = getattr(scope.get("app"), "state", None)
        registry = getattr(metrics, "metrics", None) if metrics is not None else None
        if registry is not None:
            registry.refusals.labels(code="request.too_large").inc()
        response = JSONResponse(
            problem_body(413, "request.too_large", self._message(), ezca=path.startswith("/api/")),
            status_code=413,
            media_type=PROBLEM_CONTENT_TYPE,
            headers={"Connection": "close"},
        )
        await response(scope, _drain, send)


async def _drain() -> Message:
    return {"type": "http.disconnect"}


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
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    app.add_api_route("/healthz", _health, methods=["GET"], tags=["operations"])
    app.add_api_route(
        "/metrics", _metrics, methods=["GET"], tags=["operations"], response_class=Response
    )
    for module_name in _ROUTERS:
        router = importlib.import_module(module_name).router
        assert isinstance(router, APIRouter)
        app.include_router(router)
    return app
