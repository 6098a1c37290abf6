"""The EZCA-compatible routes under ``/api``: same paths, field names and answer shapes."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

from cryptography import x509
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse

from fleetpki.api.auth import Caller, bearer_token, require_caller
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
from fleetpki.errors import ValidationError
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import certificates, enrollment
from fleetpki.services.authority import get_ca, get_template
from fleetpki.services.certificates import CertificateQuery, IssueCommand
from fleetpki.services.domains import OWNER, REQUESTER, list_domains
from fleetpki.store.models import CertificateRecord

__all__ = ["PAGE_SIZE", "router"]

router = APIRouter(tags=["EZCA-compatible"])

#: Certificates per page of GetMyCertificatesV2Paginated (pages count from 0).
PAGE_SIZE = 50

CallerDep = Annotated[Caller, Depends(require_caller)]


def _ok(message: str) -> APIResult:
    return APIResult(Success=True, Message=message)


@router.get("/api/CA/GetAvailableSSLCAs", response_model=APIResult)
def get_available_ssl_cas(request: Request, caller: CallerDep) -> APIResult:
    """The issuing CAs and templates the caller may request from (Message: JSON array)."""
    fleet = get_fleet(request)
    with fleet.transaction() as session:
        offers = enrollment.issuer_offers(session)
        models = [
            AvailableCA(
                CAID=o.ca.id,
                CAFriendlyName=o.ca.name,
                CATemplateType=o.template.template_type,
                TemplateID=o.template.id,
                KeyUsage=", ".join(sorted(o.template.allowed_key_usages)),
                MaxCertLifeDays=o.template.max_validity_days,
                DomainRestrictions=", ".join(o.template.domain_restrictions),
                CAKeyType=ca_key_type(o.ca),
                CAHashing=ca_hashing(o.ca),
            )
            for o in offers
        ]
    return _ok(json.dumps([m.model_dump(by_alias=True) for m in models]))


@router.post("/api/CA/RegisterNewDomain", response_model=APIResult)
def register_new_domain(
    body: NewDomainRegistrationRequest, request: Request, caller: CallerDep
) -> APIResult:
    """Register a domain (device id) with owners and requesters, creating new principals."""
    fleet = get_fleet(request)
    with fleet.transaction() as session:
        domain = enrollment.register_domain_with_members(
            session,
            caller.actor,
            ca_id=body.ca_id,
            template_id=body.template_id or None,
            name=body.domain,
            owners=[enrollment.MemberRef(o.object_id, o.friendly_name) for o in body.owners],
            requesters=[
                enrollment.MemberRef(r.object_id, r.friendly_name) for r in body.requesters
            ],
            now=fleet.now(),
        )
        domain_id, name = domain.id, domain.name
    return _ok(f"domain {name} registered with id {domain_id}")


@router.get("/api/CA/GetMyDomains", response_model=APIResult)
def get_my_domains(request: Request, caller: CallerDep) -> APIResult:
    """The domains the caller owns or requests for (Message: JSON array)."""
    fleet = get_fleet(request)
    me = caller.actor.principal_id
    with fleet.transaction() as session:
        found = list_domains(session, caller.actor)
        ids = [m.principal_id for d in found for m in d.members]
        names = enrollment.principal_names(session, ids)
        models = []
        for d in found:
            owners = d.principals_with(OWNER)
            requesters = d.principals_with(REQUESTER)
            models.append(
                DomainInformation(
                    CAID=d.ca_id,
                    TemplateID=d.template_id,
                    DomainID=d.id,
                    Domain=d.name,
                    CAFriendlyName=get_ca(session, d.ca_id).name,
                    IsOwner=me in owners,
                    IsRequester=me in requesters,
                    Owners=[AADObject(ObjectId=p, FriendlyName=names.get(p, p)) for p in owners],
                    Requesters=[
                        AADObject(ObjectId=p, FriendlyName=names.get(p, p)) for p in requesters
                    ],
                )
            )
    return _ok(json.dumps([m.model_dump(by_alias=True) for m in models]))


def _issue(
    request: Request, caller: Caller, command: IssueCommand
) -> tuple[str, list[x509.Certificate]]:
    fleet = get_fleet(request)
    with fleet.transaction() as session:
        record, issued = certificates.issue(
            session, caller.actor, fleet.keystore, fleet.urls, command, now=fleet.now()
        )
        chain = enrollment.issuer_chain(session, record)
    get_metrics(request).issued.labels(kind="ezca").inc()
    return issued.pem, chain


@router.post("/api/CA/RequestSSLCertificate", response_model=APIResult)
def request_ssl_certificate(
    body: CertificateCreateRequest, request: Request, caller: CallerDep
) -> APIResult:
    """Issue a certificate for a CSR (Message: the certificate PEM)."""
    pem, _ = _issue(request, caller, body.to_command())
    return _ok(pem)


def _full(pem: str, chain: list[x509.Certificate]) -> CertificateCreatedResponse:
    return CertificateCreatedResponse(
        CertificatePEM=pem,
        IssuingCACertificate=pem_of(chain[0]),
        RootCertificate=pem_of(chain[-1]),
    )


@router.post("/api/CA/RequestFullSSLCertificate", response_model=CertificateCreatedResponse)
def request_full_ssl_certificate(
    body: CertificateCreateRequest, request: Request, caller: CallerDep
) -> CertificateCreatedResponse:
    """Issue a certificate and answer with it, the issuing CA and the root in PEM."""
    return _full(*_issue(request, caller, body.to_command()))


@router.post("/api/CA/RequestSSLCertificateV2", response_model=CertificateCreatedResponse)
def request_ssl_certificate_v2(
    body: CertificateCreateRequestV2, request: Request, caller: CallerDep
) -> CertificateCreatedResponse:
    """Issue a certificate with typed SANs; answer with the PEM chain parts."""
    return _full(*_issue(request, caller, body.to_command()))


@router.post("/api/CA/RevokeCertificateV2", response_model=APIResult)
def revoke_certificate_v2(body: RevokeRequest, request: Request, caller: CallerDep) -> APIResult:
    """Revoke one of the caller's certificates by SHA-1 thumbprint."""
    fleet = get_fleet(request)
    with fleet.transaction() as session:
        record = enrollment.revoke_by_thumbprint(
            session,
            caller.actor,
            body.thumbprint,
            RevocationReason.UNSPECIFIED,
            ca_id=body.ca_id or None,
            now=fleet.now(),
        )
        serial = record.serial_hex
    get_metrics(request).revocations.labels(reason="unspecified").inc()
    return _ok(f"certificate {serial} revoked")


def _info(
    record: CertificateRecord, *, ca_name: str, can_revoke: bool, renew: int
) -> SSLCertInfoV2:
    cert = x509.load_der_x509_certificate(record.der)
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
        CAFriendlyName=ca_name,
        AutoRenewPercentage=renew,
        CertLengthDays=max(
            1, round((record.not_after - record.not_before).total_seconds() / 86400)
        ),
        CanRevoke=can_revoke,
    )


@router.get("/api/CA/GetMyCertificatesV2Paginated", response_model=APIResult)
def get_my_certificates_v2_paginated(
    request: Request,
    caller: CallerDep,
    page_number: Annotated[int, Query(alias="pageNumber", ge=0, le=1_000_000)] = 0,
) -> APIResult:
    """One page (from 0) of the caller's certificates, newest first (Message: JSON array)."""
    fleet = get_fleet(request)
    query = CertificateQuery(offset=page_number * PAGE_SIZE, limit=PAGE_SIZE)
    with fleet.transaction() as session:
        rows = certificates.list_certificates(session, caller.actor, query, now=fleet.now())
        models = [
            _info(
                r,
                ca_name=get_ca(session, r.ca_id).name,
                can_revoke=r.status != "revoked"
                and enrollment.may_revoke(session, caller.actor, r),
                renew=get_template(session, r.template_id).auto_renew_percentage,
            )
            for r in rows
        ]
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
    fleet = get_fleet(request)
    since = _parse_time(body.date_from, "DateFrom")
    until = _parse_time(body.date_to, "DateTo")
    if since is not None and until is not None and since > until:
        raise ValidationError("request.bad_time", "DateFrom is later than DateTo")
    with fleet.transaction() as session:
        pairs = enrollment.certificate_audit(
            session,
            caller.actor,
            thumbprint=body.thumbprint or None,
            since=since,
            until=until,
            offset=body.page_number * body.max_number_of_records,
            limit=body.max_number_of_records,
        )
        models = []
        for entry, record in pairs:
            if record is None:
                continue
            models.append(
                CertAuditLog(
                    CAID=record.ca_id,
                    DateRequested=iso(entry.at),
                    Domain=record.subject_cn or "",
                    DomainID=record.domain_id or "",
                    Thumbprint=record.sha1_hex,
                    TemplateID=record.template_id,
                    CertificatePEM=certificates.certificate_pem(record),
                    Requester=entry.actor_id,
                    CAFriendlyName=get_ca(session, record.ca_id).name,
                    Action=entry.action,
                )
            )
    return _ok(json.dumps([m.model_dump(by_alias=True) for m in models]))


@router.post("/api/Certificates/RenewCertificateV2", response_class=PlainTextResponse)
def renew_certificate_v2(body: CertificateAuthenticationPayload, request: Request) -> str:
    """Renew with the current certificate (certificate token); answer: the PEM chain."""
    token = bearer_token(request)
    fleet = get_fleet(request)
    audience = fleet.settings.certificate_token_audience
    with fleet.transaction() as session:
        record, issued = certificates.renew_with_token(
            session,
            fleet.keystore,
            fleet.urls,
            token=token,
            certificate_pem=body.certificate,
            csr=body.payload.csr,
            validity_days=body.payload.validity_in_days,
            audience=audience,
            source=client_source(request),
            now=fleet.now(),
        )
        chain = enrollment.issuer_chain(session, record)
    get_metrics(request).issued.labels(kind="renew").inc()
    # The leaf and the issuing CA; the root is the trust anchor and is not sent.
    return issued.pem + pem_of(chain[0])


@router.get("/api/Certificates/RevokeCertificate", response_model=APIResult)
def revoke_certificate(request: Request) -> APIResult:
    """A device revokes its own certificate, named by the certificate token's x5t."""
    token = bearer_token(request)
    fleet = get_fleet(request)
    with fleet.transaction() as session:
        record = enrollment.revoke_with_token(
            session,
            token,
            audience=fleet.settings.certificate_token_audience,
            source=client_source(request),
            now=fleet.now(),
        )
        serial = record.serial_hex
    get_metrics(request).revocations.labels(reason="cessationOfOperation").inc()
    return _ok(f"certificate {serial} revoked")
