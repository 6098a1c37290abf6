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


@router.post("/ocsp", response_class=Response)
async def ocsp_post(request: Request) -> Response:
    """OCSP over POST (RFC 6960 Appendix A.1): a DER request in, a DER response out.

    Every well-formed HTTP request gets HTTP 200; refusals are OCSP error statuses
    (malformedRequest, unauthorized) inside the response, as the RFC has it.

    Raises:
        ValidationError: ``request.unsupported_media_type`` (415) for another body type.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != OCSP_REQUEST_TYPE:
        raise ValidationError(
            "request.unsupported_media_type", f"send the OCSP request as {OCSP_REQUEST_TYPE}"
        )
    body = await request.body()
    answer = await run_in_threadpool(get_fleet(request).revocation_status.ocsp, body)
    return Response(answer, media_type=OCSP_RESPONSE_TYPE)


@router.get("/ocsp/{encoded:path}", response_class=Response)
def ocsp_get(encoded: Annotated[str, Path()], request: Request) -> Response:
    """OCSP over GET: the URL-encoded base64 DER request follows ``/ocsp/`` (Appendix A.1)."""
    der = get_fleet(request).revocation_status.ocsp_get(encoded)
    return Response(der, media_type=OCSP_RESPONSE_TYPE, headers={"Cache-Control": "max-age=60"})
