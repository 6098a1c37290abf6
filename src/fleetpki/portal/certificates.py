"""Certificates: search, detail with the decoded extensions, download, revoke with its effect."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from cryptography import x509
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from fleetpki.api.deps import get_fleet, get_metrics
from fleetpki.api.presenters import pem_of
from fleetpki.errors import ValidationError
from fleetpki.pki.revocation import RevocationReason
from fleetpki.portal.form import Form
from fleetpki.portal.pages import PAGE_SIZE, PortalRoute, page_of, redirect, render
from fleetpki.portal.visitor import Caller, checked_form, signed_in
from fleetpki.services.certificates import CertificateQuery

__all__ = ["REASONS", "extension_rows", "router"]

router = APIRouter(prefix="/portal/certificates", route_class=PortalRoute, include_in_schema=False)
CallerDep = Annotated[Caller, Depends(signed_in)]
FormDep = Annotated[Form, Depends(checked_form)]

#: The reasons a person may choose (RFC 5280 §5.3.1; removeFromCRL is for delta CRLs).
REASONS = tuple(r for r in RevocationReason if r is not RevocationReason.REMOVE_FROM_CRL)
PEM_CHAIN = "application/pem-certificate-chain"


def _name(value: x509.Name) -> str:
    return value.rfc4514_string()


def _general_names(names: x509.SubjectAlternativeName | x509.IssuerAlternativeName) -> str:
    return ", ".join(
        f"{type(n).__name__.removesuffix('Name')}: {n.value}"
        if not isinstance(n, x509.DirectoryName)
        else f"Directory: {_name(n.value)}"
        for n in names
    )


def _extension_value(ext: x509.Extension[x509.ExtensionType]) -> str:
    """A person's reading of one extension's value."""
    value = ext.value
    if isinstance(value, x509.BasicConstraints):
        return f"CA: {value.ca}" + (
            f", path length: {value.path_length}" if value.path_length is not None else ""
        )
    if isinstance(value, x509.KeyUsage):
        flags = [
            name.replace("_", " ")
            for name in (
                "digital_signature",
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "key_cert_sign",
                "crl_sign",
            )
            if getattr(value, name)
        ]
        return ", ".join(flags)
    if isinstance(value, x509.ExtendedKeyUsage):
        return ", ".join(f"{oid._name} ({oid.dotted_string})" for oid in value)
    if isinstance(value, x509.SubjectAlternativeName | x509.IssuerAlternativeName):
        return _general_names(value)
    if isinstance(value, x509.SubjectKeyIdentifier):
        return value.digest.hex(":").upper()
    if isinstance(value, x509.AuthorityKeyIdentifier):
        return (value.key_identifier or b"").hex(":").upper()
    if isinstance(value, x509.CRLDistributionPoints):
        return ", ".join(
            str(name.value) for point in value for name in (point.full_name or ()) if name
        )
    if isinstance(value, x509.AuthorityInformationAccess):
        return ", ".join(f"{d.access_method._name}: {d.access_location.value}" for d in value)
    if isinstance(value, x509.CertificatePolicies):
        return ", ".join(p.policy_identifier.dotted_string for p in value)
    return str(value)


def extension_rows(certificate: x509.Certificate) -> list[tuple[str, str, bool, str]]:
    """Each extension as (name, OID, critical, value) for the detail page."""
    return [
        (ext.oid._name, ext.oid.dotted_string, ext.critical, _extension_value(ext))
        for ext in certificate.extensions
    ]


@router.get("")
def search_certificates(
    request: Request,
    caller: CallerDep,
    serial: Annotated[str, Query(max_length=80)] = "",
    subject: Annotated[str, Query(max_length=255)] = "",
    domain: Annotated[str, Query(max_length=255)] = "",
    status: Annotated[str, Query(max_length=16)] = "",
    expiring: Annotated[str, Query(max_length=6)] = "",
    page: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    """Search by serial (straight to the certificate), subject, domain, status and expiry."""
    fleet = get_fleet(request)
    # An empty number field is sent as ``expiring=``: no filter, not an error.
    days = expiring.strip()
    if days and not days.isdigit():
        raise ValidationError("portal.bad_days", "expiring within must be a whole number of days")
    if serial.strip():
        exact = fleet.certificates.get(caller.actor, serial)
        return redirect(f"/portal/certificates/{exact.serial_hex}")
    query = CertificateQuery(
        domain=domain.strip() or None,
        subject_contains=subject.strip() or None,
        status=status or None,
        expiring_within=dt.timedelta(days=int(days)) if days else None,
        offset=page * PAGE_SIZE,
        limit=PAGE_SIZE + 1,
    )
    found = fleet.portal_pages.certificate_search(caller.actor, query)
    return render(
        request,
        "certificates.html",
        page=page_of(request, found.certificates, page),
        filters={
            "serial": serial,
            "subject": subject,
            "domain": domain,
            "status": status,
            "expiring": days,
        },
        cas=found.ca_names,
    )


@router.get("/{serial}")
def certificate_detail(serial: str, request: Request, caller: CallerDep) -> Response:
    """One certificate: fields, decoded extensions, downloads, its effect on the hubs."""
    found = get_fleet(request).portal_pages.certificate(caller.actor, serial)
    certificate = found.certificate
    return render(
        request,
        "certificate.html",
        certificate=certificate,
        effect=found.effect,
        audit=found.audit,
        extensions=extension_rows(certificate.certificate),
        issuer=_name(certificate.certificate.issuer),
        subject=_name(certificate.certificate.subject),
        ca=found.ca,
    )


@router.get("/{serial}/certificate.pem")
def download_certificate(serial: str, request: Request, caller: CallerDep) -> Response:
    """The certificate as PEM."""
    certificate = get_fleet(request).certificates.get(caller.actor, serial)
    return _download(certificate.pem, f"{certificate.serial_hex}.pem")


@router.get("/{serial}/chain.pem")
def download_chain(serial: str, request: Request, caller: CallerDep) -> Response:
    """The certificate and the CA chain that issued it, as PEM."""
    certificate, chain = get_fleet(request).portal_pages.certificate_chain(caller.actor, serial)
    text = certificate.pem + "".join(pem_of(c) for c in chain)
    return _download(text, f"{certificate.serial_hex}-chain.pem")


def _download(text: str, filename: str) -> Response:
    return Response(
        text,
        media_type=PEM_CHAIN,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/{serial}/revoke")
def confirm_revoke(serial: str, request: Request, caller: CallerDep) -> Response:
    """The confirmation: what revoking will do in each hub, and the reason to give."""
    effect = get_fleet(request).revocation_effects.effect(caller.actor, serial)
    return render(request, "revoke.html", effect=effect, reasons=REASONS)


@router.post("/{serial}/revoke")
def revoke(serial: str, request: Request, caller: CallerDep, form: FormDep) -> Response:
    """Revoke with the chosen reason (domain owners and admins, as the API)."""
    if not form.checked("confirm"):
        raise ValidationError(
            "portal.not_confirmed", "tick the confirmation to revoke the certificate"
        )
    reason = RevocationReason.parse(form.text("reason", default="unspecified"))
    revoked = get_fleet(request).certificates.revoke(caller.actor, serial, reason)
    get_metrics(request).revocations.labels(reason=reason.rfc_name).inc()
    return redirect(f"/portal/certificates/{revoked.serial_hex}", notice="revoked")
