"""Views to answer shapes: what the EZCA and /v1 routes (and the CLI's ``-o json``) show."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleetpki.api.v1_models import CAOut, CertificateOut, DomainOut, TemplateOut
from fleetpki.pki.names import SanType
from fleetpki.pki.profile import KeyUsageName
from fleetpki.services.authority import CAUrlsConfig
from fleetpki.services.ca_views import CAView, CertificateView, DomainView, TemplateView

__all__ = [
    "ca_hashing",
    "ca_key_type",
    "ca_out",
    "certificate_ekus",
    "certificate_key_usages",
    "certificate_out",
    "domain_out",
    "iso",
    "pem_of",
    "san_entries",
    "template_out",
]

_KEY_TYPES = {
    "rsa-2048": "RSA 2048",
    "rsa-3072": "RSA 3072",
    "rsa-4096": "RSA 4096",
    "ec-p256": "ECDSA P256",
    "ec-p384": "ECDSA P384",
}


def ca_key_type(key_spec: str) -> str:
    """EZCA's ``CAKeyType`` text for a CA's key spec."""
    return _KEY_TYPES.get(key_spec, key_spec)


def ca_hashing(key_spec: str) -> str:
    """EZCA's ``CAHashing``: the signature hash of a CA with this key spec."""
    return "SHA384" if key_spec == "ec-p384" else "SHA256"


def iso(value: dt.datetime) -> str:
    """An ISO 8601 UTC time with a ``Z``, as .NET and Go parse it."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pem_of(certificate: x509.Certificate) -> str:
    """A certificate as PEM text."""
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def san_entries(record: CertificateView) -> list[tuple[int, str]]:
    """The certificate's SANs as (GeneralName tag, value) pairs."""
    entries = []
    for text in record.sans:
        kind, _, value = text.partition(":")
        try:
            entries.append((int(SanType[kind]), value))
        except KeyError:
            continue
    return entries


def certificate_key_usages(certificate: x509.Certificate) -> list[str]:
    """The key usage names (EZCA spelling) a certificate carries."""
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return []
    flags = {
        KeyUsageName.DIGITAL_SIGNATURE: usage.digital_signature,
        KeyUsageName.NON_REPUDIATION: usage.content_commitment,
        KeyUsageName.KEY_ENCIPHERMENT: usage.key_encipherment,
        KeyUsageName.DATA_ENCIPHERMENT: usage.data_encipherment,
        KeyUsageName.KEY_AGREEMENT: usage.key_agreement,
    }
    return [name.value for name, present in flags.items() if present]


def certificate_ekus(certificate: x509.Certificate) -> list[str]:
    """The extended key usage OIDs a certificate carries."""
    try:
        ekus = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return []
    return [oid.dotted_string for oid in ekus]


# --------------------------------------------------------------------------- /v1 shapes
# The /v1 routes and the CLI's ``--output json`` both build their answers here, so
# that a field has one name wherever it is shown.


def ca_out(urls: CAUrlsConfig, ca: CAView) -> CAOut:
    """A CA as ``/v1/cas`` shows it."""
    return CAOut(
        id=ca.id,
        name=ca.name,
        tier=ca.tier,
        parent_id=ca.parent_id,
        status=ca.status,
        key_spec=ca.key_spec,
        subject=ca.subject,
        serial=ca.serial_hex,
        sha1=ca.sha1_hex,
        not_before=iso(ca.not_before),
        not_after=iso(ca.not_after),
        certificate_pem=pem_of(ca.certificate),
        crl_url=urls.crl_url(ca.id, ca.generation),
        generation=ca.generation,
    )


def template_out(t: TemplateView) -> TemplateOut:
    """A template as ``/v1/templates`` shows it."""
    return TemplateOut(
        id=t.id,
        ca_id=t.ca_id,
        name=t.name,
        template_type=t.template_type,
        max_validity_days=t.max_validity_days,
        allowed_key_specs=list(t.allowed_key_specs),
        default_ekus=list(t.default_ekus),
        allowed_ekus=list(t.allowed_ekus),
        allowed_key_usages=list(t.allowed_key_usages),
        domain_restrictions=list(t.domain_restrictions),
        auto_renew_percentage=t.auto_renew_percentage,
    )


def domain_out(d: DomainView) -> DomainOut:
    """A domain as ``/v1/domains`` shows it."""
    return DomainOut(
        id=d.id,
        name=d.name,
        ca_id=d.ca_id,
        template_id=d.template_id,
        owners=list(d.owners),
        requesters=list(d.requesters),
        created_at=iso(d.created_at),
    )


def certificate_out(r: CertificateView) -> CertificateOut:
    """A certificate as ``/v1/certificates`` shows it."""
    return CertificateOut(
        serial=r.serial_hex,
        ca_id=r.ca_id,
        template_id=r.template_id,
        domain_id=r.domain_id,
        subject_cn=r.subject_cn,
        sans=list(r.sans),
        key_spec=r.key_spec,
        status=r.status,
        not_before=iso(r.not_before),
        not_after=iso(r.not_after),
        sha1=r.sha1_hex,
        sha256=r.sha256_hex,
        requested_by=r.requested_by,
        renews_serial=r.renews_serial,
        superseded_by_serial=r.superseded_by_serial,
        revoked_at=iso(r.revoked_at) if r.revoked_at else None,
        revocation_reason=r.reason_name,
        certificate_pem=r.pem,
    )
