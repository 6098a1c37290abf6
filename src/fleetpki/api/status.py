"""Revocation status over HTTP: CRLs, CA certificates (caIssuers) and OCSP, without auth."""

from __future__ import annotations

import datetime as dt
import time
from email.utils import format_datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetpki.api.asgi_body import read_body, replay
from fleetpki.api.deps import get_fleet
from fleetpki.api.metrics import Metrics
from fleetpki.application import FleetPKI
from fleetpki.errors import ValidationError
from fleetpki.pki.ocsp import MAX_REQUEST_SIZE
from fleetpki.services.revocation_status import OcspAnswer

__all__ = ["OcspFastPath", "router"]

router = APIRouter(tags=["revocation status"])

CRL_TYPE = "application/pkix-crl"
CERT_TYPE = "application/pkix-cert"
OCSP_REQUEST_TYPE = "application/ocsp-request"
OCSP_RESPONSE_TYPE = "application/ocsp-response"


def _cache_headers(now: dt.datetime, until: dt.datetime) -> dict[str, str]:
    max_age = max(0, int((until - now).total_seconds()))
    return {
        "Cache-Control": f"public, max-age={max_age}",
        "Expires": format_datetime(until, usegmt=True),
    }


@router.get("/crl/{ca_id}.crl", response_class=Response)
def crl(ca_id: str, request: Request) -> Response:
    """The CA's CRL in DER (RFC 5280 §5), as its certificates' CRL distribution point names."""
    fleet = get_fleet(request)
    crl = fleet.crls.crl(ca_id)
    return Response(
        crl.der, media_type=CRL_TYPE, headers=_cache_headers(fleet.now(), crl.next_update)
    )


@router.get("/crl/{ca_id}/{generation}.crl", response_class=Response)
def generation_crl(
    ca_id: str, generation: Annotated[int, Path(ge=1, le=100000)], request: Request
) -> Response:
    """The CRL of a later generation of the CA (a renewal's certificates name this URL)."""
    fleet = get_fleet(request)
    crl = fleet.crls.crl(ca_id, generation)
    return Response(
        crl.der, media_type=CRL_TYPE, headers=_cache_headers(fleet.now(), crl.next_update)
    )


@router.get("/ca/{ca_id}/{generation}.cer", response_class=Response)
def generation_certificate(
    ca_id: str, generation: Annotated[int, Path(ge=1, le=100000)], request: Request
) -> Response:
    """The certificate of a later generation of the CA, in DER (caIssuers)."""
    der = get_fleet(request).revocation_status.ca_certificate_der(ca_id, generation)
    return Response(der, media_type=CERT_TYPE, headers={"Cache-Control": "public, max-age=86400"})


@router.get("/ca/{ca_id}.cer", response_class=Response)
def ca_certificate(ca_id: str, request: Request) -> Response:
    """A CA certificate in DER, as the caIssuers access method names it (RFC 5280 §4.2.2.1)."""
    der = get_fleet(request).revocation_status.ca_certificate_der(ca_id)
    return Response(der, media_type=CERT_TYPE, headers={"Cache-Control": "public, max-age=86400"})


def _ocsp_http(
    answer: OcspAnswer, now: dt.datetime, *, get: bool, if_none_match: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """The HTTP status, headers and body that carry an OCSP answer.

    A GET of a response that any client may reuse (no nonce) carries RFC 5019 §6.2's
    headers: ``Cache-Control: max-age`` up to its nextUpdate, ``Expires``,
    ``Last-Modified`` (its thisUpdate) and an ``ETag``; an ``If-None-Match`` naming that
    ETag gets 304 without a body (RFC 9110 §13.1.2).  POSTs, refusals and answers with a
    nonce carry none of them.
    """
    headers = {"Content-Type": OCSP_RESPONSE_TYPE}
    if not get or answer.etag is None or answer.next_update is None:
        return 200, headers, answer.der
    headers.update(_cache_headers(now, answer.next_update))
    headers["Cache-Control"] += ", no-transform, must-revalidate"
    headers["ETag"] = answer.etag
    if answer.this_update is not None:
        headers["Last-Modified"] = format_datetime(answer.this_update, usegmt=True)
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        if answer.etag in tags or "*" in tags:
            del headers["Content-Type"]
            return 304, headers, b""
    return 200, headers, answer.der


def _as_response(status: int, headers: dict[str, str], body: bytes) -> Response:
    return Response(body, status_code=status, headers=headers)


@router.post("/ocsp", response_class=Response)
async def ocsp_post(request: Request) -> Response:
    """OCSP over POST (RFC 6960 Appendix A.1): a DER request in, a DER response out.

    Every well-formed HTTP request gets HTTP 200; refusals are OCSP error statuses
    (malformedRequest, unauthorized) inside the response, as the RFC has it.  A cached
    response is sent from the event loop; anything that needs the database or a
    signature runs in a worker thread.

    Raises:
        ValidationError: ``request.unsupported_media_type`` (415) for another body type.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != OCSP_REQUEST_TYPE:
        raise ValidationError(
            "request.unsupported_media_type", f"send the OCSP request as {OCSP_REQUEST_TYPE}"
        )
    body = await request.body()
    fleet = get_fleet(request)
    answer = fleet.revocation_status.ocsp_from_memory(body)
    if answer is None:
        answer = await run_in_threadpool(fleet.revocation_status.ocsp, body)
    return _as_response(*_ocsp_http(answer, fleet.now(), get=False))


@router.get("/ocsp/{encoded:path}", response_class=Response)
async def ocsp_get(encoded: Annotated[str, Path()], request: Request) -> Response:
    """OCSP over GET: the URL-encoded base64 DER request follows ``/ocsp/`` (Appendix A.1).

    A response to a request without a nonce is the same for every client until its
    nextUpdate, so it carries ``Cache-Control: max-age`` up to then, an ``ETag`` and
    ``Last-Modified`` (RFC 5019 §6.2); ``If-None-Match`` with that ETag gets 304.
    """
    fleet = get_fleet(request)
    answer = fleet.revocation_status.ocsp_from_memory(path=encoded)
    if answer is None:
        answer = await run_in_threadpool(fleet.revocation_status.ocsp_get, encoded)
    held = request.headers.get("if-none-match")
    return _as_response(*_ocsp_http(answer, fleet.now(), get=True, if_none_match=held))


_POST_ROUTE, _GET_ROUTE = "/ocsp", "/ocsp/{encoded:path}"


class OcspFastPath:
    """An ASGI layer that sends OCSP answers from memory before the framework sees them.

    A cached response costs a few microseconds to find; routing it through FastAPI,
    its middlewares and a worker thread cost some 0.3 ms of CPU more (bench/README.md).
    So this layer, in front of the whole application (:meth:`around`: what the
    server runs), takes ``POST /ocsp`` with the OCSP content type and any
    ``GET /ocsp/...``, asks :meth:`RevocationStatusService.ocsp_from_memory`, and sends
    what it gives at once: a cached response, a response to a request with a nonce
    signed around the cached one's parts (when the key signs in this process), or the
    refusal of a malformed request. A request that needs the database or a token's
    signature is answered by :meth:`RevocationStatusService.ocsp` (or ``ocsp_get``) in a
    worker thread, as the routes above would, without the framework's routing and
    middlewares either (some 0.5 ms of CPU). Both are observed in the same latency
    metric as the routes. Anything else (another path or method, another content type,
    a body past the size limit) goes on to the application unchanged (the body read so
    far is handed on), whose routes answer it.

    Args:
        app: the application.
        fleet: the instance whose revocation status service answers.
        metrics: where latency is observed.
    """

    def __init__(self, app: ASGIApp, fleet: FleetPKI, metrics: Metrics) -> None:
        self.app = app
        self._status = fleet.revocation_status
        self._now = fleet.now
        self._metrics = metrics
        self._observers: dict[tuple[str, str, int], Any] = {}

    @classmethod
    def around(cls, app: FastAPI) -> OcspFastPath:
        """The layer in front of ``app``, a :func:`~fleetpki.api.app.create_app` application
        (its ``state`` holds the instance and the metrics)."""
        return cls(app, app.state.fleet, app.state.metrics)

    def _observer(self, method: str, route: str, status: int) -> Any:
        key = (method, route, status)
        observer = self._observers.get(key)
        if observer is None:
            observer = self._metrics.latency.labels(method=method, route=route, status=str(status))
            self._observers[key] = observer
        return observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer an OCSP request (from memory, else in a worker thread), or pass it on."""
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/ocsp"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        get = method == "GET" and path.startswith("/ocsp/")
        if get:
            route = _GET_ROUTE
            encoded = path.removeprefix("/ocsp/")
            answer = self._status.ocsp_from_memory(path=encoded)
            if answer is None:
                answer = await run_in_threadpool(self._status.ocsp_get, encoded)
        elif method == "POST" and path == "/ocsp" and _media_type(scope) == OCSP_REQUEST_TYPE:
            route = _POST_ROUTE
            messages, request = await read_body(receive, MAX_REQUEST_SIZE)
            if request is None:  # too large, or a disconnect: the route says so
                await self.app(scope, replay(messages, receive), send)
                return
            answer = self._status.ocsp_from_memory(request)
            if answer is None:
                answer = await run_in_threadpool(self._status.ocsp, request)
        else:
            await self.app(scope, receive, send)
            return
        if_none_match = _header(scope, b"if-none-match")
        status, headers, body = _ocsp_http(
            answer,
            self._now(),
            get=get,
            if_none_match=if_none_match.decode("latin-1") if if_none_match else None,
        )
        raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
        self._observer(method, route, status).observe(time.perf_counter() - started)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _media_type(scope: Scope) -> str:
    value = _header(scope, b"content-type") or b""
    return value.split(b";")[0].strip().lower().decode("latin-1")
