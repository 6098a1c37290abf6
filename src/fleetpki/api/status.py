"""Revocation status over HTTP: CRLs, CA certificates (caIssuers) and OCSP, without auth."""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fleetpki.api.deps import get_fleet
from fleetpki.errors import ValidationError
from fleetpki.services.revocation_status import OcspAnswer

__all__ = ["router"]

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
    crl = fleet.revocation_status.crl(ca_id)
    return Response(
        crl.der, media_type=CRL_TYPE, headers=_cache_headers(fleet.now(), crl.next_update)
    )


@router.get("/crl/{ca_id}/{generation}.crl", response_class=Response)
def generation_crl(
    ca_id: str, generation: Annotated[int, Path(ge=1, le=100000)], request: Request
) -> Response:
    """The CRL of a later generation of the CA (a renewal's certificates name this URL)."""
    fleet = get_fleet(request)
    crl = fleet.revocation_status.crl(ca_id, generation)
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


def _ocsp_response(answer: OcspAnswer, now: dt.datetime, *, get: bool) -> Response:
    """An OCSP answer over HTTP; a GET of a reusable one carries RFC 5019 §6.2's headers."""
    if not get or answer.etag is None or answer.next_update is None:
        return Response(answer.der, media_type=OCSP_RESPONSE_TYPE)
    headers = _cache_headers(now, answer.next_update)
    headers["Cache-Control"] += ", no-transform, must-revalidate"
    headers["ETag"] = answer.etag
    if answer.this_update is not None:
        headers["Last-Modified"] = format_datetime(answer.this_update, usegmt=True)
    return Response(answer.der, media_type=OCSP_RESPONSE_TYPE, headers=headers)


def _not_modified(request: Request, answer: OcspAnswer, now: dt.datetime) -> Response | None:
    """304 when the client already holds this response (RFC 9110 §13.1.2 If-None-Match)."""
    held = request.headers.get("if-none-match")
    if held is None or answer.etag is None or answer.next_update is None:
        return None
    tags = {tag.strip().removeprefix("W/") for tag in held.split(",")}
    if answer.etag not in tags and "*" not in tags:
        return None
    headers = _cache_headers(now, answer.next_update)
    headers["ETag"] = answer.etag
    return Response(status_code=304, headers=headers)


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
    return _ocsp_response(answer, fleet.now(), get=False)


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
    now = fleet.now()
    return _not_modified(request, answer, now) or _ocsp_response(answer, now, get=True)
