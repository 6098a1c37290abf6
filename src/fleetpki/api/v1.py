"""The native REST API under ``/v1``: CAs, templates, domains, certificates and audit."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from fleetpki.api.auth import (
    Caller,
    bearer_token,
    caller_for_token,
    require_admin,
    require_bearer,
    require_caller,
)
from fleetpki.api.deps import client_source, get_fleet, get_metrics, in_writer_thread
from fleetpki.api.params import INT64_MAX
from fleetpki.api.presenters import ca_out, certificate_out, domain_out, iso, pem_of, template_out
from fleetpki.api.v1_models import (
    AuditEntryOut,
    CAOut,
    CertificateIssuedOut,
    CertificateIssueIn,
    CertificateOut,
    DomainIn,
    DomainMembersIn,
    DomainOut,
    RenewIn,
    RevokeIn,
    TemplateOut,
    TokenOut,
)
from fleetpki.application import FleetPKI
from fleetpki.pki.names import SanType, SubjectAltName
from fleetpki.pki.profile import KeyUsageName, parse_eku
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services.ca_views import (
    AuditEntryView,
    IssuedView,
)
from fleetpki.services.certificates import CertificateQuery, IssueCommand
from fleetpki.services.enrollment import MemberRef
from fleetpki.services.principals import TOKEN_PREFIX, TokenView

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["v1"])

CallerDep = Annotated[Caller, Depends(require_caller)]
AdminDep = Annotated[Caller, Depends(require_admin)]
BearerDep = Annotated[str, Depends(require_bearer)]
PEM_CHAIN = "application/pem-certificate-chain"


def _audit_out(e: AuditEntryView) -> AuditEntryOut:
    return AuditEntryOut(
        id=e.id,
        at=iso(e.at),
        actor_id=e.actor_id,
        action=e.action,
        object_type=e.object_type,
        object_id=e.object_id,
        source=e.source,
        details=dict(e.details),
    )


# --------------------------------------------------------------------------- CAs and templates


@router.get("/cas", response_model=list[CAOut])
def list_cas(request: Request, caller: CallerDep) -> list[CAOut]:
    """Every CA, roots first."""
    fleet = get_fleet(request)
    return [ca_out(fleet.urls, ca) for ca in fleet.cas.list()]


@router.get("/cas/{ca_id}", response_model=CAOut)
def get_ca(ca_id: str, request: Request, caller: CallerDep) -> CAOut:
    """One CA."""
    fleet = get_fleet(request)
    return ca_out(fleet.urls, fleet.cas.get(ca_id))


@router.get("/cas/{ca_id}/chain", response_class=Response)
def get_ca_chain(ca_id: str, request: Request, caller: CallerDep) -> Response:
    """The CA's certificate and its parents up to the root, in PEM."""
    chain = get_fleet(request).cas.chain(ca_id)
    return Response("".join(pem_of(c) for c in chain), media_type=PEM_CHAIN)


@router.get("/templates", response_model=list[TemplateOut])
def list_templates(
    request: Request, caller: CallerDep, ca_id: str | None = None
) -> list[TemplateOut]:
    """Issuance templates, optionally of one CA."""
    return [template_out(t) for t in get_fleet(request).templates.list(ca_id)]


@router.get("/templates/{template_id}", response_model=TemplateOut)
def get_template(template_id: str, request: Request, caller: CallerDep) -> TemplateOut:
    """One template."""
    return template_out(get_fleet(request).templates.get(template_id))


# --------------------------------------------------------------------------- domains


@router.get("/domains", response_model=list[DomainOut])
def list_domains(request: Request, caller: CallerDep, name: str | None = None) -> list[DomainOut]:
    """Domains the caller owns or requests for (every domain for admins)."""
    return [domain_out(d) for d in get_fleet(request).domains.list(caller.actor, name=name)]


@router.post("/domains", response_model=DomainOut, status_code=201)
def register_domain(body: DomainIn, request: Request, caller: CallerDep) -> DomainOut:
    """Register a domain; principals first seen in the member lists are created."""
    domain = get_fleet(request).enrollment.register_domain(
        caller.actor,
        ca_id=body.ca_id,
        template_id=body.template_id,
        name=body.name,
        owners=[MemberRef(m.id, m.name) for m in body.owners],
        requesters=[MemberRef(m.id, m.name) for m in body.requesters],
    )
    return domain_out(domain)


@router.get("/domains/{domain_id}", response_model=DomainOut)
def get_domain(domain_id: str, request: Request, caller: CallerDep) -> DomainOut:
    """One domain the caller can see."""
    return domain_out(get_fleet(request).domains.get(caller.actor, domain_id))


@router.put("/domains/{domain_id}/members", response_model=DomainOut)
def set_domain_members(
    domain_id: str, body: DomainMembersIn, request: Request, caller: CallerDep
) -> DomainOut:
    """Replace a domain's owners and requesters (its owners and admins only)."""
    domain = get_fleet(request).domains.set_members(
        caller.actor, domain_id, owners=body.owners, requesters=body.requesters
    )
    return domain_out(domain)


# --------------------------------------------------------------------------- certificates


def issue_command(body: CertificateIssueIn) -> IssueCommand:
    """The issuance a request body asks for (shared with the ASGI fast path).

    Raises:
        ValidationError: for an unknown SAN type, EKU or key usage.
    """
    sans = (
        tuple(
            SubjectAltName(SanType[s.type.upper()], s.value.strip()) for s in body.subject_alt_names
        )
        if body.subject_alt_names is not None
        else None
    )
    return IssueCommand(
        ca_id=body.ca_id,
        template_id=body.template_id,
        domain=body.domain,
        csr=body.csr,
        validity_days=body.validity_days,
        subject_cn=body.subject_cn,
        subject_alt_names=sans,
        ekus=tuple(parse_eku(e) for e in body.ekus) if body.ekus is not None else None,
        key_usages=(
            tuple(KeyUsageName.parse(k) for k in body.key_usages)
            if body.key_usages is not None
            else None
        ),
    )


def _issued(issued: IssuedView) -> CertificateIssuedOut:
    return CertificateIssuedOut(
        certificate=certificate_out(issued.certificate),
        chain_pem=issued.pem + pem_of(issued.chain[0]),
        root_pem=pem_of(issued.chain[-1]),
    )


def issue_with_api_token(
    fleet: FleetPKI, token: str, source: str, command: IssueCommand
) -> CertificateIssuedOut:
    """Check an API token and issue for its principal in one unit of work, and present
    the answer (blocking: run it in a writer thread). The route and the fast path's one
    call (:class:`fleetpki.api.issuance_fast_path.IssuanceFastPath`).

    Raises:
        FleetPKIError: as :meth:`CertificateService.issue_with_token`.
    """
    return _issued(fleet.certificates.issue_with_token(token, source, command))


@router.post("/certificates", response_model=CertificateIssuedOut, status_code=201)
async def issue_certificate(
    body: CertificateIssueIn, request: Request, token: BearerDep
) -> CertificateIssuedOut:
    """Issue a certificate for a CSR naming a domain the caller may request for.

    Requests with an API token are answered by the fast path in front of the framework
    (:class:`fleetpki.api.issuance_fast_path.IssuanceFastPath`) the same way; this route
    answers the others (OIDC tokens, and every request the fast path hands on).
    """
    command = issue_command(body)
    fleet = get_fleet(request)

    def issue() -> CertificateIssuedOut:
        # The token's check and the issuance in one worker-thread hop (the hot path),
        # and for an API token in one unit of work.
        if token.startswith(TOKEN_PREFIX):
            return issue_with_api_token(fleet, token, client_source(request), command)
        return _issued(fleet.certificates.issue(caller_for_token(request, token).actor, command))

    answer = await in_writer_thread(request.app, issue)
    get_metrics(request).issued.labels(kind="v1").inc()
    return answer


@router.get("/certificates", response_model=list[CertificateOut])
def list_certificates(
    request: Request,
    caller: CallerDep,
    domain: str | None = None,
    status: str | None = None,
    ca_id: str | None = None,
    expiring_within_days: Annotated[int | None, Query(ge=0, le=36500)] = None,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[CertificateOut]:
    """Certificates the caller can see, newest first, with filters."""
    query = CertificateQuery(
        domain=domain,
        status=status,
        ca_id=ca_id,
        expiring_within=(
            dt.timedelta(days=expiring_within_days) if expiring_within_days is not None else None
        ),
        offset=offset,
        limit=limit,
    )
    return [certificate_out(r) for r in get_fleet(request).certificates.search(caller.actor, query)]


def _visible(request: Request, caller: Caller, serial: str) -> CertificateOut:
    return certificate_out(get_fleet(request).certificates.get(caller.actor, serial))


@router.get("/certificates/{serial}", response_model=CertificateOut)
def get_certificate(serial: str, request: Request, caller: CallerDep) -> CertificateOut:
    """One certificate, by serial number in hex."""
    return _visible(request, caller, serial)


@router.get("/certificates/{serial}/pem", response_class=Response)
def get_certificate_pem(serial: str, request: Request, caller: CallerDep) -> Response:
    """One certificate as PEM."""
    return Response(_visible(request, caller, serial).certificate_pem, media_type=PEM_CHAIN)


@router.post("/certificates/{serial}/revoke", response_model=CertificateOut)
def revoke_certificate(
    serial: str, body: RevokeIn, request: Request, caller: CallerDep
) -> CertificateOut:
    """Revoke a certificate with an RFC 5280 reason (domain owners and admins)."""
    reason = RevocationReason.parse(body.reason)
    answer = certificate_out(get_fleet(request).certificates.revoke(caller.actor, serial, reason))
    get_metrics(request).revocations.labels(reason=reason.rfc_name).inc()
    return answer


@router.post("/certificates/renew", response_model=CertificateIssuedOut, status_code=201)
def renew_certificate(body: RenewIn, request: Request) -> CertificateIssuedOut:
    """Renew with the current certificate; the bearer token is a certificate token."""
    token = bearer_token(request)
    issued = get_fleet(request).renewal.renew_with_token(
        token=token,
        certificate_pem=body.certificate,
        csr=body.csr,
        validity_days=body.validity_days,
        source=client_source(request),
    )
    answer = _issued(issued)
    get_metrics(request).issued.labels(kind="renew").inc()
    return answer


@router.get("/certificates/{serial}/audit", response_model=list[AuditEntryOut])
def certificate_audit(
    serial: str,
    request: Request,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntryOut]:
    """The audit entries of one certificate the caller can see."""
    entries = get_fleet(request).certificates.audit(caller.actor, serial, limit=limit)
    return [_audit_out(e) for e in entries]


# --------------------------------------------------------------------------- audit


@router.get("/audit", response_model=list[AuditEntryOut])
def audit_log(
    request: Request,
    caller: AdminDep,
    object_type: str | None = None,
    object_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntryOut]:
    """The newest audit entries (admins only), optionally for one object."""
    entries = get_fleet(request).audit.latest(
        caller.actor, object_type=object_type, object_id=object_id, limit=limit
    )
    return [_audit_out(e) for e in entries]


def _token_out(token: TokenView) -> TokenOut:
    def when(value: dt.datetime | None) -> str | None:
        return iso(value) if value is not None else None

    return TokenOut(
        id=token.token_id,
        principal_id=token.principal_id,
        name=token.name,
        prefix=token.prefix,
        created_at=iso(token.created_at),
        expires_at=when(token.expires_at),
        revoked_at=when(token.revoked_at),
        last_used_at=when(token.last_used_at),
    )


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(
    request: Request,
    caller: CallerDep,
    principal_id: Annotated[str | None, Query(max_length=128)] = None,
) -> list[TokenOut]:
    """API tokens: the caller's own, or for admins any principal's (every one by default)."""
    found = get_fleet(request).principals.tokens(caller.actor, principal_id)
    return [_token_out(t) for t in found]


@router.post("/tokens/{token_id}/revoke", response_model=TokenOut)
def revoke_token(
    token_id: Annotated[str, Path(max_length=64)], request: Request, caller: CallerDep
) -> TokenOut:
    """Revoke an API token (its principal or an admin); its portal sign-ins end too."""
    return _token_out(get_fleet(request).principals.revoke_token(caller.actor, token_id))
