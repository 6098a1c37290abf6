"""Errors as HTTP answers: one renderer of ``application/problem+json`` (RFC 9457)."""

from __future__ import annotations

import http
import logging
import uuid
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetpki.errors import (
    AuthenticationError,
    FleetPKIError,
    InternalError,
    ValidationError,
    http_status_for,
)

__all__ = [
    "INTERNAL_ERROR",
    "PROBLEM_CONTENT_TYPE",
    "HTTPRefusal",
    "count_refusal",
    "fleetpki_error_handler",
    "http_error",
    "http_exception_handler",
    "problem_body",
    "problem_json",
    "problem_response",
    "report_server_error",
    "validation_error_handler",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"
_log = logging.getLogger("fleetpki.api")

# Codes for HTTP errors that Starlette raises before a route runs.
_HTTP_CODES = {
    400: "request.malformed",
    404: "request.not_found",
    405: "request.method_not_allowed",
    406: "request.not_acceptable",
    413: "request.too_large",
    415: "request.unsupported_media_type",
}

#: What an unexpected error answers: no internals, only this and a request id.
INTERNAL_ERROR = InternalError("internal.error", "an internal error occurred")


def report_server_error(method: str, path: str, exc: BaseException) -> str:
    """Log a request's server-side failure once and return the request id given to the caller.

    Every answer of 500 or more goes through here, whichever route family renders it,
    so each such error is one log entry carrying the id the caller sees (``request_id``,
    Azure's ``trackingId``, ARM's ``x-ms-request-id``). An unexpected exception is
    logged as an error with its traceback; a :class:`FleetPKIError` of status 5xx (the
    database unavailable, a token that stopped answering) as a warning with its code and
    its internal cause, since the caller got a stable code and may retry.
    """
    request_id = uuid.uuid4().hex
    if isinstance(exc, FleetPKIError):
        cause = exc.__cause__
        _log.warning(
            "%s on %s %s (request id %s): %s%s",
            exc.code,
            method,
            path,
            request_id,
            exc.message,
            f" (cause: {type(cause).__name__}: {cause})" if cause is not None else "",
        )
    else:
        _log.error(
            "unexpected error on %s %s (request id %s)", method, path, request_id, exc_info=exc
        )
    return request_id


class HTTPRefusal(FleetPKIError):
    """A refusal of the HTTP layer itself (no such route, wrong method), with its status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.default_status = status


def http_error(status: int, detail: str) -> FleetPKIError:
    """The fleetpki error for an HTTP error Starlette or FastAPI raised with ``status``."""
    return HTTPRefusal(status, _HTTP_CODES.get(status, f"http.{status}"), detail)


def problem_body(
    status: int, code: str, detail: str, *, ezca: bool = False, request_id: str | None = None
) -> dict[str, Any]:
    """The JSON body of a problem answer.

    Args:
        status: the HTTP status.
        code: the stable fleetpki code.
        detail: the safe, human message.
        ezca: add EZCA's APIResultModel fields (``Success``, ``Message``) so that
            EZCA clients, which show the body's ``Message``, read the error too.
        request_id: the id under which an unexpected error was logged.
    """
    try:
        title = http.HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": f"urn:fleetpki:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if request_id is not None:
        body["request_id"] = request_id
    if ezca:
        body["Success"] = False
        body["Message"] = f"{detail} ({code})"
    return body


def problem_response(request: Request, status: int, code: str, detail: str) -> JSONResponse:
    """A problem answer for ``request``, counted in the refusal metric."""
    count_refusal(request.app, code)
    return problem_json(request.url.path, status, code, detail)


def count_refusal(app: Any, code: str) -> None:
    """Count a refusal by code in the application's metrics, when it has them."""
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    if metrics is not None:
        metrics.refusals.labels(code=code).inc()


def problem_json(
    path: str,
    status: int,
    code: str,
    detail: str,
    *,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The ``application/problem+json`` answer for a request to ``path``."""
    extra = dict(headers or {})
    if status == 401:
        extra["WWW-Authenticate"] = 'Bearer realm="fleetpki"'
    if request_id is not None:
        extra["x-request-id"] = request_id
    return JSONResponse(
        problem_body(status, code, detail, ezca=path.startswith("/api/"), request_id=request_id),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=extra or None,
    )


async def fleetpki_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Render a :class:`FleetPKIError` with its code, its status and its safe message."""
    assert isinstance(exc, FleetPKIError)
    if isinstance(exc, AuthenticationError | ValidationError) and exc.__cause__ is not None:
        # The internal cause may help an operator; it never goes to the caller.
        _log.info("refused %s: %s (cause: %r)", exc.code, exc.message, exc.__cause__)
    status = http_status_for(exc)
    if status >= 500:
        request_id = report_server_error(request.method, request.url.path, exc)
        count_refusal(request.app, exc.code)
        return problem_json(request.url.path, status, exc.code, exc.message, request_id=request_id)
    return problem_response(request, status, exc.code, exc.message)


def _describe(errors: list[Any]) -> str:
    # Locations and pydantic's messages only: the offending input is never echoed,
    # since it may hold a token or a key.
    parts = []
    for error in errors[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Malformed JSON: 400 ``request.malformed_json``; other bad input: 422 ``request.invalid``."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem_response(
            request, 400, "request.malformed_json", "the request body is not valid JSON"
        )
    return problem_response(
        request, 422, "request.invalid", f"the request is invalid: {_describe(errors)}"
    )


async def http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own HTTP errors (no route, wrong method) as problems."""
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    error = http_error(exc.status_code, detail)
    return problem_response(request, exc.status_code, error.code, error.message)
