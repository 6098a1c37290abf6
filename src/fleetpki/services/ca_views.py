"""What the CA side's use cases return: frozen views built inside the unit of work.

Adapters (api/, cli/, demo) present these; they never see an ORM object. Each view is
built from its record by a ``*_view`` function the services call before their unit of
work ends.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from fleetpki.pki.issuance import IssuedCertificate
from fleetpki.pki.pem import pem_text
from fleetpki.pki.revocation import RevocationReason
from fleetpki.store.models import (
    AuditEntry,
    CARecord,
    CertificateRecord,
    DomainRecord,
    Principal,
    TemplateRecord,
)

__all__ = [
    "OWNER",
    "REQUESTER",
    "AuditEntryView",
    "CAView",
    "CertificateAuditView",
    "CertificateEntryView",
    "CertificateView",
    "CrlView",
    "DomainInformationView",
    "DomainView",
    "ExpirySummary",
    "HierarchyView",
    "IssuedView",
    "IssuerOfferView",
    "PrincipalView",
    "TemplateView",
    "audit_entry_view",
    "ca_view",
    "certificate_view",
    "domain_view",
    "principal_view",
    "template_view",
]

#: A domain role: may change the domain and revoke its certificates.
OWNER = "owner"
#: A domain role: may request certificates for the domain's name.
REQUESTER = "requester"


@dataclass(frozen=True, slots=True)
class CAView:
    """A certificate authority as callers see it."""

    id: str
    name: str
    tier: str
    parent_id: str | None
    status: str
    key_spec: str
    subject: str
    serial_hex: str
    sha1_hex: str
    not_before: dt.datetime
    not_after: dt.datetime
    certificate_der: bytes = field(repr=False)
    #: The active generation's number (1 until the CA is renewed).
    generation: int = 1

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate."""
        return x509.load_der_x509_certificate(self.certificate_der)


def ca_view(ca: CARecord) -> CAView:
    """The view of a CA record."""
    return CAView(
        id=ca.id,
        name=ca.name,
        tier=ca.tier,
        parent_id=ca.parent_id,
        status=ca.status,
        key_spec=ca.key_spec,
        subject=ca.subject,
        serial_hex=ca.serial_hex,
        sha1_hex=ca.sha1_hex,
        not_before=ca.not_before,
        not_after=ca.not_after,
        certificate_der=ca.certificate_der,
        generation=ca.generation,
    )


@dataclass(frozen=True, slots=True)
class TemplateView:
    """An issuance template as stored."""

    id: str
    ca_id: str
    name: str
    template_type: str
    max_validity_days: int
    allowed_key_specs: tuple[str, ...]
    default_ekus: tuple[str, ...]
    allowed_ekus: tuple[str, ...]
    allowed_key_usages: tuple[str, ...]
    domain_restrictions: tuple[str, ...]
    auto_renew_percentage: int


def template_view(t: TemplateRecord) -> TemplateView:
    """The view of a template record."""
    return TemplateView(
        id=t.id,
        ca_id=t.ca_id,
        name=t.name,
        template_type=t.template_type,
        max_validity_days=t.max_validity_days,
        allowed_key_specs=tuple(t.allowed_key_specs),
        default_ekus=tuple(t.default_ekus),
        allowed_ekus=tuple(t.allowed_ekus),
        allowed_key_usages=tuple(t.allowed_key_usages),
        domain_restrictions=tuple(t.domain_restrictions),
        auto_renew_percentage=t.auto_renew_percentage,
    )


@dataclass(frozen=True, slots=True)
class HierarchyView:
    """What creating a CA hierarchy made: the root, the issuing CA and its template."""

    root: CAView
    issuing: CAView
    template: TemplateView


@dataclass(frozen=True, slots=True)
class IssuerOfferView:
    """An issuing CA and one of its templates: what a caller may request from."""

    ca: CAView
    template: TemplateView


@dataclass(frozen=True, slots=True)
class CertificateView:
    """An issued certificate and its lifecycle."""

    serial_hex: str
    ca_id: str
    template_id: str
    domain_id: str | None
    subject_cn: str | None
    sans: tuple[str, ...]
    key_spec: str
    status: str
    not_before: dt.datetime
    not_after: dt.datetime
    sha1_hex: str
    sha256_hex: str
    requested_by: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    revocation_reason: int | None
    der: bytes = field(repr=False)
    renews_serial: str | None = None
    #: The certificate that renewed this one: it can renew no more, and is revoked
    #: (reason superseded) once the renewal grace period has passed.
    superseded_by_serial: str | None = None

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate."""
        return x509.load_der_x509_certificate(self.der)

    @property
    def pem(self) -> str:
        """The certificate as PEM text."""
        return pem_text(self.der)

    @property
    def reason_name(self) -> str | None:
        """The RFC 5280 name of the revocation reason, when revoked."""
        if self.revocation_reason is None:
            return None
        return RevocationReason.parse(self.revocation_reason).rfc_name


def certificate_view(
    r: CertificateRecord,
    renews_serial: str | None = None,
    superseded_by_serial: str | None = None,
) -> CertificateView:
    """The view of a certificate record."""
    return CertificateView(
        serial_hex=r.serial_hex,
        ca_id=r.ca_id,
        template_id=r.template_id,
        domain_id=r.domain_id,
        subject_cn=r.subject_cn,
        sans=tuple(r.sans),
        key_spec=r.key_spec,
        status=r.status,
        not_before=r.not_before,
        not_after=r.not_after,
        sha1_hex=r.sha1_hex,
        sha256_hex=r.sha256_hex,
        requested_by=r.requested_by,
        created_at=r.created_at,
        revoked_at=r.revoked_at,
        revocation_reason=r.revocation_reason,
        der=r.der,
        renews_serial=renews_serial,
        superseded_by_serial=superseded_by_serial,
    )


@dataclass(frozen=True, slots=True)
class IssuedView:
    """A certificate just issued (or renewed), with the chain that validates it.

    Attributes:
        certificate: the stored certificate.
        issued: what the issuance pipeline signed.
        chain: the issuing CA's certificate followed by its parents up to the root.
    """

    certificate: CertificateView
    issued: IssuedCertificate
    chain: tuple[x509.Certificate, ...]

    @property
    def pem(self) -> str:
        """The leaf as PEM text."""
        return self.issued.pem


@dataclass(frozen=True, slots=True)
class CertificateEntryView:
    """A certificate in a caller's listing, with what EZCA's listing shows of it."""

    certificate: CertificateView
    ca_name: str
    auto_renew_percentage: int
    can_revoke: bool


@dataclass(frozen=True, slots=True)
class ExpirySummary:
    """Expiry dates for monitoring: every CA, and the nearest valid leaf expiry."""

    cas: tuple[CAView, ...]
    nearest_leaf_not_after: dt.datetime | None


@dataclass(frozen=True, slots=True)
class DomainView:
    """A registered domain with its owners and requesters (principal ids)."""

    id: str
    name: str
    ca_id: str
    template_id: str
    owners: tuple[str, ...]
    requesters: tuple[str, ...]
    created_at: dt.datetime
    created_by: str


def domain_view(d: DomainRecord) -> DomainView:
    """The view of a domain record."""
    return DomainView(
        id=d.id,
        name=d.name,
        ca_id=d.ca_id,
        template_id=d.template_id,
        owners=tuple(d.principals_with(OWNER)),
        requesters=tuple(d.principals_with(REQUESTER)),
        created_at=d.created_at,
        created_by=d.created_by,
    )


@dataclass(frozen=True, slots=True)
class DomainInformationView:
    """A domain as EZCA's GetMyDomains shows it: with its CA's name and member names."""

    domain: DomainView
    ca_name: str
    names: Mapping[str, str]

    def name_of(self, principal_id: str) -> str:
        """The friendly name of a member (its id when it has none)."""
        return self.names.get(principal_id, principal_id)


@dataclass(frozen=True, slots=True)
class PrincipalView:
    """A principal: who may call fleetpki."""

    id: str
    friendly_name: str
    principal_type: str
    is_admin: bool
    created_at: dt.datetime


def principal_view(p: Principal) -> PrincipalView:
    """The view of a principal record."""
    return PrincipalView(p.id, p.friendly_name, p.principal_type, p.is_admin, p.created_at)


@dataclass(frozen=True, slots=True)
class AuditEntryView:
    """One audit entry: who did what to which object, when and from where."""

    id: int
    at: dt.datetime
    actor_id: str
    action: str
    object_type: str
    object_id: str
    source: str
    details: Mapping[str, Any]


def audit_entry_view(e: AuditEntry) -> AuditEntryView:
    """The view of an audit entry."""
    return AuditEntryView(
        id=e.id,
        at=e.at,
        actor_id=e.actor_id,
        action=e.action,
        object_type=e.object_type,
        object_id=e.object_id,
        source=e.source,
        details=dict(e.details),
    )


@dataclass(frozen=True, slots=True)
class CertificateAuditView:
    """An audit entry about a certificate, with that certificate and its CA's name."""

    entry: AuditEntryView
    certificate: CertificateView
    ca_name: str


@dataclass(frozen=True, slots=True)
class CrlView:
    """A CA's current CRL in DER and when it lapses."""

    der: bytes
    next_update: dt.datetime
