"""The EZCA JSON shapes (``shared/reference/ezca-api.md``): pydantic models with exact aliases."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field

from fleetpki.errors import ValidationError
from fleetpki.pki.names import SanType, SubjectAltName
from fleetpki.pki.profile import KeyUsageName, parse_eku
from fleetpki.services.certificates import IssueCommand

__all__ = [
    "AADObject",
    "APIResult",
    "AuditRequest",
    "AvailableCA",
    "CertAuditLog",
    "CertRenewRequest",
    "CertificateAuthenticationPayload",
    "CertificateCreateRequest",
    "CertificateCreateRequestV2",
    "CertificateCreatedResponse",
    "DomainInformation",
    "NewDomainRegistrationRequest",
    "RevokeRequest",
    "SSLCertInfoV2",
    "SubjectAltValue",
    "subject_common_name",
]


class _Model(BaseModel):
    # Accept both the EZCA names (aliases) and the Python names; write the EZCA names;
    # ignore fields fleetpki does not use (AKVName, SecretName, ...).
    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True, extra="ignore"
    )


class _Request(_Model):
    # What clients send is taken in strict mode: JSON types are not coerced, so a
    # boolean never becomes a number nor a string a number (issue 14).
    model_config = ConfigDict(strict=True)


class APIResult(_Model):
    """EZCA's APIResultModel: success and a message (data travels as a string in it)."""

    success: bool = Field(alias="Success")
    message: str = Field(alias="Message")


class AADObject(_Request):
    """EZCA's AADObjectModel: a principal by Entra object id."""

    object_id: str = Field(alias="ObjectId", max_length=64)
    friendly_name: str = Field(default="", alias="FriendlyName", max_length=200)
    object_type: str = Field(default="User", alias="ObjectType", max_length=32)
    is_valid: bool = Field(default=True, alias="isValid")


class AvailableCA(_Model):
    """EZCA's AvailableCAModel: an issuing CA and template the caller may request from."""

    ca_id: str = Field(alias="CAID")
    ca_friendly_name: str = Field(alias="CAFriendlyName")
    ca_template_type: str = Field(alias="CATemplateType")
    template_id: str = Field(alias="TemplateID")
    key_usage: str = Field(alias="KeyUsage")
    max_cert_life_days: int = Field(alias="MaxCertLifeDays")
    domain_restrictions: str = Field(alias="DomainRestrictions")
    ca_key_type: str = Field(alias="CAKeyType")
    ca_hashing: str = Field(alias="CAHashing")
    ca_type: str = Field(default="PrivateCA", alias="CAType")
    ca_tier: str = Field(default="SubordinateCA", alias="CATier")


class NewDomainRegistrationRequest(_Request):
    """EZCA's NewDomainRegistrationRequest."""

    ca_id: str = Field(alias="CAID", max_length=64)
    template_id: str | None = Field(default=None, alias="TemplateID", max_length=64)
    domain: str = Field(alias="Domain", max_length=255)
    owners: list[AADObject] = Field(default_factory=list, alias="Owners", max_length=100)
    requesters: list[AADObject] = Field(default_factory=list, alias="Requesters", max_length=100)


class DomainInformation(_Model):
    """EZCA's DomainInformationModel."""

    ca_id: str = Field(alias="CAID")
    template_id: str = Field(alias="TemplateID")
    domain_id: str = Field(alias="DomainID")
    domain: str = Field(alias="Domain")
    ca_friendly_name: str = Field(alias="CAFriendlyName")
    is_owner: bool = Field(alias="IsOwner")
    is_requester: bool = Field(alias="IsRequester")
    owners: list[AADObject] = Field(alias="Owners")
    requesters: list[AADObject] = Field(alias="Requesters")
    requesters_only: list[AADObject] = Field(default_factory=list, alias="RequestersOnly")
    notification_emails: list[str] = Field(default_factory=list, alias="NotificationEmails")


def subject_common_name(subject_name: str | None) -> str | None:
    """The CN of EZCA's ``SubjectName`` (``CN=device`` or ``CN = device``), or ``None``."""
    if subject_name is None or not subject_name.strip():
        return None
    text = subject_name.strip()
    head, sep, rest = text.partition("=")
    if sep and head.strip().upper() == "CN":
        # Only the CN is taken; further RDNs (", O=...") are not part of a device id.
        return rest.split(",", 1)[0].strip() or None
    return text


def _san_from_text(value: str) -> SubjectAltName:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return SubjectAltName(SanType.DNS, value)
    return SubjectAltName(SanType.IP, value)


class _CreateBase(_Request):
    subject_name: str | None = Field(default=None, alias="SubjectName", max_length=1024)
    ca_id: str = Field(alias="CAID", max_length=64)
    template_id: str | None = Field(default=None, alias="TemplateID", max_length=64)
    csr: str = Field(alias="CSR", max_length=65536)
    validity_in_days: int | None = Field(
        default=None, alias="ValidityInDays", ge=-100000, le=100000
    )
    ekus: list[str] | None = Field(default=None, alias="EKUs", max_length=20)
    key_usages: list[str] | None = Field(default=None, alias="KeyUsages", max_length=10)
    selected_location: str = Field(default="IoT Device", alias="SelectedLocation", max_length=256)
    auto_renew: bool = Field(default=False, alias="AutoRenew")
    auto_renew_percentage: int = Field(default=80, alias="AutoRenewPercentage", ge=0, le=100)

    def _command(self, sans: tuple[SubjectAltName, ...] | None) -> IssueCommand:
        """The issuance command (EKU names and key usage names parsed; codes on failure)."""
        return IssueCommand(
            ca_id=self.ca_id,
            template_id=self.template_id or None,
            csr=self.csr,
            validity_days=self.validity_in_days,
            subject_cn=subject_common_name(self.subject_name),
            subject_alt_names=sans,
            ekus=tuple(parse_eku(e) for e in self.ekus) if self.ekus else None,
            key_usages=(
                tuple(KeyUsageName.parse(k) for k in self.key_usages) if self.key_usages else None
            ),
        )


class CertificateCreateRequest(_CreateBase):
    """EZCA's CertificateCreateRequestModel (v1: SANs as DNS name strings)."""

    subject_alt_names: list[str] | None = Field(
        default=None, alias="SubjectAltNames", max_length=100
    )

    def to_command(self) -> IssueCommand:
        """The issuance command; IP literals among the SAN strings become IP SANs."""
        sans = (
            tuple(_san_from_text(s.strip()) for s in self.subject_alt_names if s.strip())
            if self.subject_alt_names
            else None
        )
        return self._command(sans)


class SubjectAltValue(_Request):
    """EZCA's typed SAN: ``ValueSTR`` and ``SubjectAltType`` (the GeneralName tag)."""

    value: str = Field(alias="ValueSTR", max_length=1024)
    subject_alt_type: int = Field(alias="SubjectAltType", ge=0, le=1000)


class CertificateCreateRequestV2(_CreateBase):
    """EZCA's CertificateCreateRequestV2Model (typed SANs)."""

    subject_alt_names: list[SubjectAltValue] | None = Field(
        default=None, alias="SubjectAltNames", max_length=100
    )
    cert_app_id: str | None = Field(default=None, alias="CertAppID", max_length=256)
    sid: str | None = Field(default=None, alias="Sid", max_length=256)

    def to_command(self) -> IssueCommand:
        """The issuance command.

        Raises:
            ValidationError: ``san.unsupported_type`` for a tag other than 1, 2, 6, 7.
        """
        sans: list[SubjectAltName] = []
        for san in self.subject_alt_names or []:
            try:
                kind = SanType(san.subject_alt_type)
            except ValueError:
                raise ValidationError(
                    "san.unsupported_type",
                    f"SubjectAltType {san.subject_alt_type} is not supported (1, 2, 6 or 7)",
                ) from None
            sans.append(SubjectAltName(kind, san.value.strip()))
        return self._command(tuple(sans) if self.subject_alt_names else None)


class CertificateCreatedResponse(_Model):
    """EZCA's CertificateCreatedResponse: the new certificate and its CA chain in PEM."""

    certificate_pem: str = Field(alias="CertificatePEM")
    issuing_ca_certificate: str = Field(alias="IssuingCACertificate")
    root_certificate: str = Field(alias="RootCertificate")


class CertRenewRequest(_Request):
    """EZCA's CertRenewReqModel."""

    csr: str = Field(alias="CSR", max_length=65536)
    validity_in_days: int | None = Field(
        default=None, alias="ValidityInDays", ge=-100000, le=100000
    )


class CertificateAuthenticationPayload(_Request):
    """EZCA's CertificateAuthenticationPayloadModel<CertRenewReqModel>."""

    certificate: str = Field(alias="Certificate", max_length=65536)
    payload: CertRenewRequest = Field(alias="Payload")


class RevokeRequest(_Request):
    """The body of RevokeCertificateV2: a certificate by SHA-1 thumbprint."""

    ca_id: str | None = Field(default=None, alias="CAID", max_length=64)
    template_id: str | None = Field(default=None, alias="TemplateID", max_length=64)
    thumbprint: str = Field(alias="Thumbprint", max_length=128)


class SSLCertInfoV2(_Model):
    """EZCA's SSLCertInfoV2: one of the caller's certificates."""

    certificate_pem: str = Field(alias="CertificatePEM")
    thumbprint: str = Field(alias="Thumbprint")
    ca_id: str = Field(alias="CAID")
    subject_name: str = Field(alias="SubjectName")
    template_id: str = Field(alias="TemplateID")
    revoked: bool = Field(alias="Revoked")
    subject_alternate_names: list[SubjectAltValue] = Field(alias="SubjectAlternateNames")
    key_usages: list[str] = Field(alias="KeyUsages")
    ekus: list[str] = Field(alias="EKUs")
    date_requested: str = Field(alias="DateRequested")
    expiry_date: str = Field(alias="ExpiryDate")
    cert_location_type: str = Field(default="local", alias="CertLocationType")
    cert_location: str = Field(default="", alias="CertLocation")
    ca_friendly_name: str = Field(alias="CAFriendlyName")
    cert_name_at_location: str = Field(default="", alias="CertNameAtLocation")
    auto_renew: bool = Field(default=False, alias="AutoRenew")
    auto_renew_percentage: int = Field(alias="AutoRenewPercentage")
    cert_length_days: int = Field(alias="CertLengthDays")
    cert_app_id: str = Field(default="", alias="CertAppID")
    certificate_tags: str = Field(default="", alias="CertificateTags")
    can_revoke: bool = Field(alias="CanRevoke")


class AuditRequest(_Request):
    """EZCA's AuditRequestModel, with an optional certificate thumbprint to narrow it."""

    date_from: str | None = Field(default=None, alias="DateFrom", max_length=64)
    date_to: str | None = Field(default=None, alias="DateTo", max_length=64)
    max_number_of_records: int = Field(default=100, alias="MaxNumberOfRecords", ge=1, le=1000)
    page_number: int = Field(default=0, alias="PageNumber", ge=0, le=100000)
    thumbprint: str | None = Field(default=None, alias="Thumbprint", max_length=128)


class CertAuditLog(_Model):
    """EZCA's SSLCertAuditLogModel: one audit entry about a certificate."""

    tenant_id: str = Field(default="", alias="TenantID")
    ca_id: str = Field(alias="CAID")
    date_requested: str = Field(alias="DateRequested")
    domain: str = Field(alias="Domain")
    domain_id: str = Field(alias="DomainID")
    thumbprint: str = Field(alias="Thumbprint")
    template_id: str = Field(alias="TemplateID")
    certificate_pem: str = Field(alias="CertificatePEM")
    sub_id: str = Field(default="", alias="SubID")
    requester: str = Field(alias="Requester")
    ca_friendly_name: str = Field(alias="CAFriendlyName")
    cert_location_type: str = Field(default="local", alias="CertLocationType")
    cert_location: str = Field(default="", alias="CertLocation")
    cert_name_at_location: str = Field(default="", alias="CertNameAtLocation")
    action: str = Field(alias="Action")
