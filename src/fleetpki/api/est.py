"""EST (RFC 7030) under ``/.well-known/est/``: cacerts, simpleenroll, simplereenroll, csrattrs.

Bodies and answers are base64 DER as the RFC has them (§4.1.3, §4.2.1, §4.2.3):
``application/pkcs10`` requests, ``application/pkcs7-mime; smime-type=certs-only``
answers.  An optional CA label (``/.well-known/est/{ca-id}/...``, §3.2.2) picks an
issuing CA; without one the current issuer serves (``services.authority.current_issuer``).

Who may enroll:

- ``simpleenroll``: an enrollment agent, by HTTP Basic (username: its principal id,
  password: one of its API tokens), ``Authorization: Bearer`` with the same
  token or an OIDC JWT, or, without an Authorization header, a TLS client
  certificate that is the agent's own: one of ours, current and unrevoked, whose
  CN is the agent's principal id and which the agent requested itself (§3.3.2).
  The CSR's names must be domains the agent may request, exactly as on every
  other issuance route.  A 401 challenges for Basic as well as Bearer (§3.2.3).
- ``simplereenroll``: only the TLS client certificate, which must be a current,
  unrevoked certificate of ours; the new CSR's subject must be the current
  certificate's, and its SANs among the current names (§4.2.2).
"""

from __future__ import annotations

import base64
import binascii

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from fleetpki.api.auth import Caller, caller_for_token, require_caller
from fleetpki.api.deps import client_source, get_fleet
from fleetpki.api.problems import problem_response
from fleetpki.api.tls import client_certificate_der
from fleetpki.application import FleetPKI
from fleetpki.errors import AuthenticationError, ValidationError, http_status_for
from fleetpki.services import Actor
from fleetpki.services.certificates import IssueCommand

__all__ = ["CSRATTRS_DER", "router"]

router = APIRouter(prefix="/.well-known/est", tags=["EST (RFC 7030)"])

CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
PKCS10 = "application/pkcs10"
CSRATTRS_TYPE = "application/csrattrs"
_BASE64_HEADERS = {"Content-Transfer-Encoding": "base64"}
_BASIC_CHALLENGE = 'Basic realm="fleetpki EST"'
#: The CsrAttrs answer (RFC 7030 §4.5.2): a SEQUENCE naming ecdsa-with-SHA256
#: (1.2.840.10045.4.3.2), the signature the CA prefers on CSRs.
CSRATTRS_DER = bytes.fromhex("300a06082a8648ce3d040302")
_MAX_CSR_BASE64 = 96 * 1024


def require_agent(request: Request) -> Caller:
    """The enrollment agent: HTTP Basic, a bearer token, or the agent's own client certificate.

    RFC 7030 §3.2.3 lets EST servers take HTTP Basic; the password is one of the
    principal's API tokens, and the username must be that principal's id.  An
    Authorization header, when present, decides; otherwise a TLS client
    certificate may stand for the principal that requested it for its own id
    (RFC 7030 §3.3.2).

    Raises:
        AuthenticationError: 401 ``auth.*``; ``auth.bad_basic`` for malformed Basic
        credentials; ``auth.basic_user_mismatch`` when the username is not the
        token's principal; ``auth.certificate_not_a_credential`` and
        ``certificate.*`` for a client certificate that is not a current agent's own.
    """
    header = request.headers.get("authorization")
    client_der = client_certificate_der(request)
    if header is None and client_der is not None:
        return _caller_for_certificate(request, client_der)
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return require_caller(request)
    try:
        username, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthenticationError("auth.bad_basic", "malformed HTTP Basic credentials") from None
    if not password:
        raise AuthenticationError("auth.bad_basic", "HTTP Basic needs an API token as password")
    caller = caller_for_token(request, password)
    if username.strip().lower() != caller.actor.principal_id.lower():
        raise AuthenticationError(
            "auth.basic_user_mismatch", "the Basic username is not the token's principal"
        )
    return caller


def _caller_for_certificate(request: Request, certificate_der: bytes) -> Caller:
    principal = get_fleet(request).renewal.principal_for_client_certificate(certificate_der)
    actor = Actor(
        principal_id=principal.id, is_admin=principal.is_admin, source=client_source(request)
    )
    return Caller(actor=actor, display_name=principal.friendly_name)


def _certs_only(certs: list[x509.Certificate]) -> Response:
    der = pkcs7.serialize_certificates(certs, serialization.Encoding.DER)
    return Response(base64.encodebytes(der), media_type=CERTS_ONLY, headers=_BASE64_HEADERS)


async def _csr_from(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != PKCS10:
        raise ValidationError("request.unsupported_media_type", f"send the CSR as {PKCS10}")
    body = await request.body()
    if len(body) > _MAX_CSR_BASE64:
        raise ValidationError("csr.too_large", "the CSR is too large")
    try:
        # RFC 7030 §4.2.1 bodies are base64 with RFC 2045 line breaks.
        return base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error:
        raise ValidationError("csr.malformed", "the body is not base64 DER PKCS#10") from None


def _cacerts(fleet: FleetPKI, label: str | None) -> Response:
    # Without a label the current issuer serves (services/authority's one rule).
    return _certs_only(fleet.cas.issuing_chain(label))


def _simpleenroll(fleet: FleetPKI, caller: Caller, label: str | None, csr: bytes) -> Response:
    issued = fleet.certificates.issue(caller.actor, IssueCommand(ca_id=label, csr=csr))
    return _certs_only([issued.issued.certificate])


def _simplereenroll(fleet: FleetPKI, request: Request, current_der: bytes, csr: bytes) -> Response:
    issued = fleet.renewal.renew_with_client_certificate(
        certificate_der=current_der, csr=csr, source=client_source(request)
    )
    return _certs_only([issued.issued.certificate])


@router.get("/cacerts", response_class=Response)
@router.get("/{label}/cacerts", response_class=Response, include_in_schema=False)
def cacerts(request: Request, label: str | None = None) -> Response:
    """The issuing CA and its parents as base64 PKCS#7 certs-only (RFC 7030 §4.1); no auth."""
    return _cacerts(get_fleet(request), label)


@router.post("/simpleenroll", response_class=Response)
@router.post("/{label}/simpleenroll", response_class=Response, include_in_schema=False)
async def simpleenroll(request: Request, label: str | None = None) -> Response:
    """Issue a certificate for a base64 PKCS#10 CSR (RFC 7030 §4.2.1) to an enrollment agent."""
    try:
        caller = await run_in_threadpool(require_agent, request)
    except AuthenticationError as exc:
        # RFC 7030 §3.2.3 / RFC 7235 §4.1: name every scheme this route takes.
        refusal = problem_response(request, http_status_for(exc), exc.code, exc.message)
        refusal.headers.append("WWW-Authenticate", _BASIC_CHALLENGE)
        return refusal
    csr = await _csr_from(request)
    return await run_in_threadpool(_simpleenroll, get_fleet(request), caller, label, csr)


@router.post("/simplereenroll", response_class=Response)
@router.post("/{label}/simplereenroll", response_class=Response, include_in_schema=False)
async def simplereenroll(request: Request, label: str | None = None) -> Response:
    """Renew for the holder of the TLS client certificate (RFC 7030 §4.2.2).

    Raises:
        AuthenticationError: ``est.client_certificate_required`` (401) without one;
        ``certificate.revoked`` / ``certificate.expired`` / ``certificate.unknown``.
    """
    current = client_certificate_der(request)
    if current is None:
        raise AuthenticationError(
            "est.client_certificate_required",
            "simplereenroll needs the current certificate as the TLS client certificate",
        )
    csr = await _csr_from(request)
    return await run_in_threadpool(_simplereenroll, get_fleet(request), request, current, csr)


@router.get("/csrattrs", response_class=Response)
@router.get("/{label}/csrattrs", response_class=Response, include_in_schema=False)
def csrattrs(label: str | None = None) -> Response:
    """The CSR attributes the CA wants (RFC 7030 §4.5), base64 DER CsrAttrs."""
    return Response(
        base64.encodebytes(CSRATTRS_DER), media_type=CSRATTRS_TYPE, headers=_BASE64_HEADERS
    )
