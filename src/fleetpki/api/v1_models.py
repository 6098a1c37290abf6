"""The native ``/v1`` JSON shapes: snake_case resources for CAs, domains and certificates."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AuditEntryOut",
    "CAOut",
    "CertificateIssueIn",
    "CertificateIssuedOut",
    "CertificateOut",
    "DomainIn",
    "DomainMembersIn",
    "DomainOut",
    "MemberIn",
    "RenewIn",
    "RevokeIn",
    "SANIn",
    "TemplateOut",
]


class _In(BaseModel):
    # Strict: JSON types are taken as sent, never coerced (``true`` is not 1, ``"30"``
    # is not 30), so a lax conversion cannot turn bad input into an action (issue 14).
    model_config = ConfigDict(extra="forbid", strict=True)


class CAOut(BaseModel):
    """A certificate authority."""

    id: str
    name: str
    tier: str
    parent_id: str | None
    status: str
    key_spec: str
    subject: str
    serial: str
    sha1: str
    not_before: str
    not_after: str
    certificate_pem: str
    crl_url: str
    generation: int = 1


class TemplateOut(BaseModel):
    """An issuance template."""

    id: str
    ca_id: str
    name: str
    template_type: str
    max_validity_days: int
    allowed_key_specs: list[str]
    default_ekus: list[str]
    allowed_ekus: list[str]
    allowed_key_usages: list[str]
    domain_restrictions: list[str]
    auto_renew_percentage: int


class MemberIn(_In):
    """A principal by object id (GUID), with a display name for first sight."""

    id: str = Field(max_length=64)
    name: str = Field(default="", max_length=200)


class DomainIn(_In):
    """Register a domain."""

    name: str = Field(max_length=255)
    ca_id: str | None = Field(default=None, max_length=64)
    template_id: str | None = Field(default=None, max_length=64)
    owners: list[MemberIn] = Field(default_factory=list, max_length=100)
    requesters: list[MemberIn] = Field(default_factory=list, max_length=100)


class DomainMembersIn(_In):
    """Replace a domain's owners and requesters (ids)."""

    owners: list[str] = Field(max_length=100)
    requesters: list[str] = Field(default_factory=list, max_length=100)


class DomainOut(BaseModel):
    """A domain and who may act on it."""

    id: str
    name: str
    ca_id: str
    template_id: str
    owners: list[str]
    requesters: list[str]
    created_at: str


class SANIn(_In):
    """A typed subject alternative name."""

    type: str = Field(pattern=r"^(?i:dns|ip|email|uri)$")
    value: str = Field(max_length=1024)


class CertificateIssueIn(_In):
    """Issue a certificate for a CSR."""

    csr: str = Field(max_length=65536)
    domain: str | None = Field(default=None, max_length=255)
    ca_id: str | None = Field(default=None, max_length=64)
    template_id: str | None = Field(default=None, max_length=64)
    validity_days: int | None = Field(default=None, ge=-100000, le=100000)
    subject_cn: str | None = Field(default=None, max_length=255)
    subject_alt_names: list[SANIn] | None = Field(default=None, max_length=100)
    ekus: list[str] | None = Field(default=None, max_length=20)
    key_usages: list[str] | None = Field(default=None, max_length=10)


class CertificateOut(BaseModel):
    """A certificate and its lifecycle."""

    serial: str
    ca_id: str
    template_id: str
    domain_id: str | None
    subject_cn: str | None
    sans: list[str]
    key_spec: str
    status: str
    not_before: str
    not_after: str
    sha1: str
    sha256: str
    requested_by: str
    renews_serial: str | None = None
    superseded_by_serial: str | None = Field(
        default=None, description="the certificate that renewed this one; it can renew no more"
    )
    revoked_at: str | None = None
    revocation_reason: str | None = None
    certificate_pem: str


class CertificateIssuedOut(BaseModel):
    """A certificate just issued, with the chain to send beside it."""

    certificate: CertificateOut
    chain_pem: str = Field(description="the certificate followed by the issuing CA, in PEM")
    root_pem: str = Field(description="the root CA certificate: the trust anchor")


class RevokeIn(_In):
    """Revoke with an RFC 5280 reason (name or code)."""

    reason: str | int = "unspecified"


class RenewIn(_In):
    """Renew: the current certificate (the bearer is a certificate token) and a new CSR."""

    certificate: str = Field(max_length=65536)
    csr: str = Field(max_length=65536)
    validity_days: int | None = Field(default=None, ge=-100000, le=100000)


class AuditEntryOut(BaseModel):
    """One audit entry."""

    id: int
    at: str
    actor_id: str
    action: str
    object_type: str
    object_id: str
    source: str
    details: dict[str, object]


class TokenOut(BaseModel):
    """An API token, without its secret: ``prefix`` is the secret's first characters."""

    id: str
    principal_id: str
    name: str
    prefix: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None
