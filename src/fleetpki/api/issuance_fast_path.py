"""``POST /v1/certificates`` with an API token, answered before the framework.

The issuance hot path (issue 11): routing a request through FastAPI (the route table,
dependency solving, the body's and the answer's validation) cost about as much CPU as
the issuance's own unit of work, measured in process through the ASGI app (bench/README.md).
This layer sits just inside the error boundary, the body limit and the latency metric,
so those apply as to any route, and takes only what it can answer exactly as the route
would: ``POST /v1/certificates`` with a JSON body that parses and an ``fpk_`` API token.
It parses the body with the route's own model and command (:func:`fleetpki.api.v1.issue_command`),
makes the route's one call (:func:`fleetpki.api.v1.issue_with_api_token`) in the same
writer thread, renders a refusal with the application's own error handler, and counts
the issuance in the same metric. Everything else (no token or an OIDC one, a body that
does not parse, another content type) goes on to the route unchanged, with the body it
read handed on, and the route answers it, errors included.
"""

from __future__ import annotations

import pydantic
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetpki.api.asgi_body import read_body, replay
from fleetpki.api.deps import in_writer_thread
from fleetpki.api.metrics import Metrics
from fleetpki.api.problems import fleetpki_error_handler
from fleetpki.api.v1 import issue_command, issue_with_api_token
from fleetpki.api.v1 import router as v1_router
from fleetpki.api.v1_models import CertificateIssueIn
from fleetpki.application import FleetPKI
from fleetpki.errors import FleetPKIError
from fleetpki.services.certificates import IssueCommand
from fleetpki.services.principals import TOKEN_PREFIX

__all__ = ["PATH", "IssuanceFastPath"]

#: The one route this layer answers.
PATH = "/v1/certificates"

_BEARER = b"bearer "
_JSON_HEADERS = [(b"content-type", b"application/json")]


class IssuanceFastPath:
    """An ASGI middleware that issues for ``POST /v1/certificates`` with an API token.

    Args:
        app: the application inside (the routes).
        fleet: the instance whose certificate service issues.
        metrics: where issuances are counted.
        max_body_bytes: bodies declared larger go on to the route (the body limit outside
            refuses them first in the application; this is a second guard).
    """

    def __init__(
        self, app: ASGIApp, fleet: FleetPKI, metrics: Metrics, max_body_bytes: int
    ) -> None:
        self.app = app
        self._fleet = fleet
        self._issued = metrics.issued.labels(kind="v1")
        self._max_body_bytes = max_body_bytes
        self._route = next(
            r
            for r in v1_router.routes
            if isinstance(r, APIRoute) and r.path == PATH and "POST" in (r.methods or ())
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Issue, or pass the request on."""
        if (
            scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "POST"
            or not (token := _api_token(scope))
        ):
            await self.app(scope, receive, send)
            return
        messages, body = await read_body(receive, self._max_body_bytes)
        command = _command(body)
        if command is None:
            await self.app(scope, replay(messages, receive), send)
            return
        # The latency metric outside reads the route's template from the scope.
        scope["route"] = self._route
        client = scope.get("client")
        source = client[0] if client else "unknown"
        fleet = self._fleet
        try:
            answer = await in_writer_thread(
                scope["app"], lambda: issue_with_api_token(fleet, token, source, command)
            )
        except FleetPKIError as exc:
            response = await fleetpki_error_handler(Request(scope), exc)
            await response(scope, replay(messages, receive), send)
            return
        self._issued.inc()
        payload = answer.model_dump_json().encode()
        headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _api_token(scope: Scope) -> str | None:
    """The ``fpk_`` API token of a JSON request's ``Authorization: Bearer`` header, if any."""
    content_type: bytes | None = None
    authorization: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value
        elif name == b"content-type":
            content_type = value
    if authorization is None or content_type is None:
        return None
    if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
        return None
    if authorization[:7].lower() != _BEARER:
        return None
    token = authorization[7:].strip().decode("latin-1")
    return token if token.startswith(TOKEN_PREFIX) else None


def _command(body: bytes | None) -> IssueCommand | None:
    """The route's command for ``body``, or ``None`` for the route to refuse it."""
    if body is None:
        return None
    try:
        return issue_command(CertificateIssueIn.model_validate_json(body))
    except (pydantic.ValidationError, FleetPKIError, ValueError, KeyError):
        return None
