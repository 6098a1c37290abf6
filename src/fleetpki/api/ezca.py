"""The EZCA-compatible routes under ``/api``: same paths, field names and answer shapes."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse

from fleetpki.api.auth import Caller, bearer_token, require_bearer, require_caller
from fleetpki.api.deps import client_source, get_fleet, get_metrics
from fleetpki.api.ezca_models import (
    AADObject,
    APIResult,
    AuditRequest,
    AvailableCA,
    CertAuditLog,
    CertificateAuthenticationPayload,
    CertificateCreatedResponse,
    CertificateCreateRequest,
    CertificateCreateRequestV2,
    DomainInformation,
    NewDomainRegistrationRequest,
    RevokeRequest,
    SSLCertInfoV2,
    SubjectAltValue,
)
from fleetpki.api.presenters import (
    ca_hashing,
    ca_key_type,
    certificate_ekus,
    certificate_key_usages,
    iso,
    pem_of,
    san_entries,
)
from fleetpki.api.v1 import issue_for_bearer
from fleetpki.errors import ValidationError
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services.ca_views import CertificateEntryView, IssuedView
from fleetpki.services.certificates import IssueCommand
from fleetpki.services.enrollment import MemberRef

__all__ = ["PAGE_SIZE", "router"]

router = APIRouter(tags=["EZCA-compatible"])

#: Certificates per page of GetMyCertificatesV2Paginated (pages count from 0).
PAGE_SIZE = 50

CallerDep = Annotated[Caller, Depends(require_caller)]
BearerDep = Annotated[str, Depends(require_bearer)]


def _ok(message: str) -> APIResult:
    return APIResult(Success=True, Message=message)


@router.get("/api/CA/GetAvailableSSLCAs", response_model=APIResult)
def get_available_ssl_cas(request: Request, caller: CallerDep) -> APIResult:
    """The issuing CAs and templates the caller may request from (Message: JSON array)."""
    models = [
        AvailableCA(
            CAID=o.ca.id,
            CAFriendlyName=o.ca.name,
            CATemplateType=o.template.template_type,
            TemplateID=o.template.id,
            KeyUsage=", ".join(sorted(o.template.allowed_key_usages)),
            MaxCertLifeDays=o.template.max_validity_days,
            DomainRestrictions=", ".join(o.template.domain_restrictions),
            CAKeyType=ca_key_type(o.ca.key_spec),
            CAHashing=ca_hashing(o.ca.key_spec),
        )
        for o in get_fleet(request).cas.issuer_offers()
    ]
    return _ok(json.dumps([m.model_dump(by_alias=True) for m in models]))


@router.post("/api/CA/RegisterNewDomain", response_model=APIResult)
def register_new_domain(
    body: NewDomainRegistrationRequest, request: Request, caller: CallerDep
) -> APIResult:
    """Register a domain (device id) with owners and requesters, creating new principals."""
    domain = get_fleet(request).enrollment.register_domain(
        caller.actor,
        ca_id=body.ca_id,
        template_id=body.template_id or None,
        name=body.domain,
        owners=[MemberRef(o.object_id, o.friendly_name) for o in body.owners],
        requesters=[MemberRef(r.object_id, r.friendly_name) for r in body.requesters],
    )
    return _ok(f"domain {domain.name} registered with id {domain.id}")


@router.get("/api/CA/GetMyDomains", response_model=APIResult)
def get_my_domains(request: Request, caller: CallerDep) -> APIResult:
    """The domains the caller owns or requests for (Message: JSON array)."""
    me = caller.actor.principal_id
    models = [
        DomainInformation(
            CAID=info.domain.ca_id,
            TemplateID=info.domain.template_id,
            DomainID=info.domain.id,
            Domain=info.domain.name,
            CAFriendlyName=info.ca_name,
            IsOwner=me in info.domain.owners,
            IsRequester=me in info.domain.requesters,
            Owners=[
                AADObject(ObjectId=p, FriendlyName=info.name_of(p)) for p in info.domain.owners
            ],
            Requesters=[
                AADObject(ObjectId=p, FriendlyName=info.name_of(p)) for p in info.domain.requesters
            ],
        )
        for info in get_fleet(request).enrollment.my_domains(caller.actor)
    ]
    return _ok(json.dumps([m.model_dump(by_alias=True) for m in models]))


async def _issue(request: Request, token: str, command: IssueCommand) -> IssuedView:
    # The token's check and the issuance in one hop, as for POST /v1/certificates.
    issued = await issue_for_bearer(request, token, command)
    get_metrics(request).issued.labels(kind="ezca").inc()
    return issued


@router.post("/api/CA/RequestSSLCertificate", response_model=APIResult)
async def request_ssl_certificate(
    body: CertificateCreateRequest, request: Request, token: BearerDep
) -> APIResult:
    """Issue a certificate for a CSR (Message: the certificate PEM)."""
    return _ok((await _issue(request, token, body.to_command())).pem)


def _full(issued: IssuedView) -> CertificateCreatedResponse:
    return CertificateCreatedResponse(
        CertificatePEM=issued.pem,
        IssuingCACertificate=pem_of(issued.chain[0]),
        RootCertificate=pem_of(issued.chain[-1]),
    )


@router.post("/api/CA/RequestFullSSLCertificate", response_model=CertificateCreatedResponse)
async def request_full_ssl_certificate(
    body: CertificateCreateRequest, request: Request, token: BearerDep
) -> CertificateCreatedResponse:
    """Issue a certificate and answer with it, the issuing CA and the root in PEM."""
    return _full(await _issue(request, token, body.to_command()))


@router.post("/api/CA/RequestSSLCertificateV2", response_model=CertificateCreatedResponse)
async def request_ssl_certificate_v2(
    body: CertificateCreateRequestV2, request: Request, token: BearerDep
) -> CertificateCreatedResponse:
    """Issue a certificate with typed SANs; answer with the PEM chain parts."""
    return _full(await _issue(request, token, body.to_command()))


@router.post("/api/CA/RevokeCertificateV2", response_model=APIResult)
def revoke_certificate_v2(body: RevokeRequest, request: Request, caller: CallerDep) -> APIResult:
    """Revoke one of the caller's certificates by SHA-1 thumbprint."""
    record = get_fleet(request).certificates.revoke_by_thumbprint(
        caller.actor, body.thumbprint, RevocationReason.UNSPECIFIED, ca_id=body.ca_id or None
    )
    get_metrics(request).revocations.labels(reason="unspecified").inc()
    return _ok(f"certificate {record.serial_hex} revoked")


def _info(entry: CertificateEntryView) -> SSLCertInfoV2:
    record = entry.certificate
    cert = record.certificate
    return SSLCertInfoV2(
        CertificatePEM=pem_of(cert),
        Thumbprint=record.sha1_hex,
        CAID=record.ca_id,
        SubjectName=f"CN={record.subject_cn}" if record.subject_cn else "",
        TemplateID=record.template_id,
        Revoked=record.status == "revoked",
        SubjectAlternateNames=[
            SubjectAltValue(ValueSTR=v, SubjectAltType=t) for t, v in san_entries(record)
        ],
        KeyUsages=certificate_key_usages(cert),
        EKUs=certificate_ekus(cert),
        DateRequested=iso(record.created_at),
        ExpiryDate=iso(record.not_after),
        CAFriendlyName=entry.ca_name,
        AutoRenewPercentage=entry.auto_renew_percentage,
        CertLengthDays=max(
            1, round((record.not_after - record.not_before).total_seconds() / 86400)
        ),
        CanRevoke=entry.can_revoke,
    )


@router.get("/api/CA/GetMyCertificatesV2Paginated", response_model=APIResult)
def get_my_certificates_v2_paginated(
    request: Request,
    caller: CallerDep,
    page_number: Annotated[int, Query(alias="pageNumber", ge=0, le=1_000_000)] = 0,
) -> APIResult:
    """One page (from 0) of the caller's certificates, newest first (Message: JSON array)."""
    entries = get_fleet(request).enrollment.my_certificates(
        caller.actor, offset=page_number * PAGE_SIZE, limit=PAGE_SIZE
    )
    models = [_info(e) for e in entries]
    return _ok(json.dumps([m.model_dump(by_alias=True) for m in models]))


def _parse_time(value: str | None, field: str) -> dt.datetime | None:
    if value is None or not value.strip():
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError("request.bad_time", f"{field} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@router.post("/api/Audit/GetCertLogs", response_model=APIResult)
def get_cert_logs(body: AuditRequest, request: Request, caller: CallerDep) -> APIResult:
    """Audit entries about the caller's certificates (Message: JSON array)."""
    since = _parse_time(body.date_from, "DateFrom")
    until = _parse_time(body.date_to, "DateTo")
    if since is not None and until is not None and since > until:
        raise ValidationError("request.bad_time", "DateFrom is later than DateTo")
    found = get_fleet(request).enrollment.certificate_audit(
        caller.actor,
        thumbprint=body.thumbprint or None,
        since=since,
        until=until,
        offset=body.page_number * body.max_number_of_records,
        limit=body.max_number_of_records,
    )
    models = [
        CertAuditLog(
            CAID=a.certificate.ca_id,
            DateRequested=iso(a.entry.at),
            Domain=a.certificate.subject_cn or "",
            DomainID=a.certificate.domain_id or "",
            Thumbprint=a.certificate.sha1_hex,
            TemplateID=a.certificate.template_id,
            CertificatePEM=a.certificate.pem,
            Requester=a.entry.actor_id,
            CAFriendlyName=a.ca_name,
            Action=a.entry.action,
        )
        for a in found
    ]
    return _ok(json.dumps([m.model_dump(by_alias=True) for m in models]))


@router.post("/api/Certificates/RenewCertificateV2", response_class=PlainTextResponse)
def renew_certificate_v2(body: CertificateAuthenticationPayload, request: Request) -> str:
    """Renew with the current certificate (certificate token); answer: the PEM chain."""
    token = bearer_token(request)
    issued = get_fleet(request).renewal.renew_with_token(
        token=token,
        certificate_pem=body.certificate,
        csr=body.payload.csr,
        validity_days=body.payload.validity_in_days,
        source=client_source(request),
    )
    get_metrics(request).issued.labels(kind="renew").inc()
    # The leaf and the issuing CA; the root is the trust anchor and is not sent.
    return issued.pem + pem_of(issued.chain[0])


@router.get("/api/Certificates/RevokeCertificate", response_model=APIResult)
def revoke_certificate(request: Request) -> APIResult:
    """A device revokes its own certificate, named by the certificate token's x5t."""
    token = bearer_token(request)
    record = get_fleet(request).enrollment.revoke_with_token(token, source=client_source(request))
    get_metrics(request).revocations.labels(reason="cessationOfOperation").inc()
    return _ok(f"certificate {record.serial_hex} revoked")
