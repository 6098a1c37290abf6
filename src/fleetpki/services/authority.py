"""CAs and templates: creating the hierarchy, finding issuers, exporting chains."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetpki.errors import NotFoundError, ValidationError
from fleetpki.keystore import KeyStore
from fleetpki.pki.ca import (
    DEFAULT_ISSUING_DAYS,
    DEFAULT_ROOT_DAYS,
    CAUrls,
    build_root_ca,
    build_subordinate_ca,
    ca_name,
)
from fleetpki.pki.issuance import Issuer, thumbprints
from fleetpki.pki.keys import CA_KEY_SPECS, KeySpec, generate_key
from fleetpki.pki.profile import DEFAULT_MAX_VALIDITY_DAYS, KeyUsageName, Template
from fleetpki.services.audit import record_audit
from fleetpki.services.context import Actor
from fleetpki.store.models import CARecord, TemplateRecord

__all__ = [
    "CAUrlsConfig",
    "HierarchySpec",
    "ca_certificate",
    "ca_chain",
    "create_hierarchy",
    "get_ca",
    "get_template",
    "issuer_for",
    "list_cas",
    "list_templates",
    "template_from_record",
]


@dataclass(frozen=True, slots=True)
class CAUrlsConfig:
    """The public base URL under which CRLs, OCSP and CA certificates are served."""

    public_url: str

    def crl_url(self, ca_id: str) -> str:
        """The CRL of a CA (RFC 5280 §4.2.1.13)."""
        return f"{self.public_url.rstrip('/')}/crl/{ca_id}.crl"

    def ocsp_url(self) -> str:
        """The OCSP responder (RFC 6960 §2.1, reached through AIA)."""
        return f"{self.public_url.rstrip('/')}/ocsp"

    def ca_issuers_url(self, ca_id: str) -> str:
        """A CA's certificate in DER (RFC 5280 §4.2.2.1 caIssuers)."""
        return f"{self.public_url.rstrip('/')}/ca/{ca_id}.cer"


@dataclass(frozen=True, slots=True)
class HierarchySpec:
    """What ``fleetpki init`` creates."""

    name: str = "fleetpki"
    root_key: KeySpec = KeySpec.EC_P384
    issuing_key: KeySpec = KeySpec.EC_P256
    root_days: int = DEFAULT_ROOT_DAYS
    issuing_days: int = DEFAULT_ISSUING_DAYS
    max_validity_days: int = DEFAULT_MAX_VALIDITY_DAYS


def _ca_record(
    ca_id: str,
    name: str,
    tier: str,
    parent_id: str | None,
    cert: x509.Certificate,
    key_ref: str,
    spec: KeySpec,
    now: dt.datetime,
) -> CARecord:
    der = cert.public_bytes(serialization.Encoding.DER)
    sha1, _ = thumbprints(der)
    return CARecord(
        id=ca_id,
        name=name,
        tier=tier,
        parent_id=parent_id,
        status="active",
        key_ref=key_ref,
        key_spec=spec.value,
        subject=cert.subject.rfc4514_string(),
        serial_hex=format(cert.serial_number, "X"),
        sha1_hex=sha1,
        certificate_der=der,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        created_at=now,
        crl_number=0,
        crl_stale=True,
    )


def create_hierarchy(
    session: Session,
    actor: Actor,
    keystore: KeyStore,
    urls: CAUrlsConfig,
    spec: HierarchySpec,
    *,
    now: dt.datetime,
) -> tuple[CARecord, CARecord, TemplateRecord]:
    """Create a root CA, an issuing CA signed by it and the default IoT device template.

    Raises:
        ValidationError: ``ca.bad_key_type`` for a key type a CA may not have.
    """
    for key_spec in (spec.root_key, spec.issuing_key):
        if key_spec not in CA_KEY_SPECS:
            raise ValidationError("ca.bad_key_type", f"a CA key cannot be {key_spec.value}")
    root_id, issuing_id = str(uuid.uuid4()), str(uuid.uuid4())
    root_signer = keystore.create(generate_key(spec.root_key))
    root_cert = build_root_ca(
        root_signer, ca_name(f"{spec.name} Root CA", spec.name), now=now, days=spec.root_days
    )
    issuing_signer = keystore.create(generate_key(spec.issuing_key))
    issuing_cert = build_subordinate_ca(
        root_cert,
        root_signer,
        issuing_signer,
        ca_name(f"{spec.name} Issuing CA", spec.name),
        now=now,
        days=spec.issuing_days,
        urls=CAUrls(crl_url=urls.crl_url(root_id), ca_issuers_url=urls.ca_issuers_url(root_id)),
    )
    root = _ca_record(
        root_id,
        f"{spec.name} Root CA",
        "root",
        None,
        root_cert,
        root_signer.key_ref,
        spec.root_key,
        now,
    )
    issuing = _ca_record(
        issuing_id,
        f"{spec.name} Issuing CA",
        "issuing",
        root_id,
        issuing_cert,
        issuing_signer.key_ref,
        spec.issuing_key,
        now,
    )
    session.add(root)
    session.flush()
    session.add(issuing)
    template = Template(template_id=str(uuid.uuid4()), max_validity_days=spec.max_validity_days)
    record = template_record(template, issuing_id, now)
    session.add(record)
    for ca in (root, issuing):
        record_audit(
            session,
            actor,
            "ca.create",
            "ca",
            ca.id,
            at=now,
            details={"name": ca.name, "tier": ca.tier, "key": ca.key_spec, "subject": ca.subject},
        )
    record_audit(
        session,
        actor,
        "template.create",
        "template",
        record.id,
        at=now,
        details={"ca_id": issuing_id, "name": record.name},
    )
    return root, issuing, record


def template_record(template: Template, ca_id: str, now: dt.datetime) -> TemplateRecord:
    """The stored form of a template."""
    return TemplateRecord(
        id=template.template_id,
        ca_id=ca_id,
        name=template.name,
        template_type=template.template_type,
        max_validity_days=template.max_validity_days,
        allowed_key_specs=sorted(s.value for s in template.allowed_key_specs),
        default_ekus=list(template.default_ekus),
        allowed_ekus=sorted(template.allowed_ekus),
        allowed_key_usages=sorted(u.value for u in template.allowed_key_usages),
        domain_restrictions=list(template.domain_restrictions),
        auto_renew_percentage=template.auto_renew_percentage,
        created_at=now,
    )


def template_from_record(record: TemplateRecord) -> Template:
    """The domain form of a stored template."""
    return Template(
        template_id=record.id,
        name=record.name,
        template_type=record.template_type,
        max_validity_days=record.max_validity_days,
        allowed_key_specs=frozenset(KeySpec(v) for v in record.allowed_key_specs),
        default_ekus=tuple(record.default_ekus),
        allowed_ekus=frozenset(record.allowed_ekus),
        allowed_key_usages=frozenset(KeyUsageName(v) for v in record.allowed_key_usages),
        domain_restrictions=tuple(record.domain_restrictions),
        auto_renew_percentage=record.auto_renew_percentage,
    )


def _parse_id(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise NotFoundError(f"{what}.not_found", f"no {what} {value!r} (not a GUID)") from None


def get_ca(session: Session, ca_id: str) -> CARecord:
    """Look up a CA by id.

    Raises:
        NotFoundError: ``ca.not_found``.
    """
    ca = session.get(CARecord, _parse_id(ca_id, "ca"))
    if ca is None:
        raise NotFoundError("ca.not_found", f"no CA {ca_id}")
    return ca


def list_cas(session: Session) -> list[CARecord]:
    """Every CA, roots first."""
    return list(
        session.scalars(select(CARecord).order_by(CARecord.tier.desc(), CARecord.created_at))
    )


def get_template(session: Session, template_id: str, ca_id: str | None = None) -> TemplateRecord:
    """Look up a template, optionally checking that it belongs to ``ca_id``.

    Raises:
        NotFoundError: ``template.not_found``.
    """
    record = session.get(TemplateRecord, _parse_id(template_id, "template"))
    if record is None or (ca_id is not None and record.ca_id != ca_id):
        raise NotFoundError("template.not_found", f"no template {template_id} for that CA")
    return record


def list_templates(session: Session, ca_id: str | None = None) -> list[TemplateRecord]:
    """Templates, optionally of one CA."""
    query = select(TemplateRecord).order_by(TemplateRecord.created_at)
    if ca_id is not None:
        query = query.where(TemplateRecord.ca_id == ca_id)
    return list(session.scalars(query))


def ca_certificate(ca: CARecord) -> x509.Certificate:
    """The CA's certificate object."""
    return x509.load_der_x509_certificate(ca.certificate_der)


def ca_chain(session: Session, ca: CARecord) -> list[x509.Certificate]:
    """The CA's certificate followed by its parents up to the root."""
    chain = [ca_certificate(ca)]
    current = ca
    while current.parent_id is not None:
        current = get_ca(session, current.parent_id)
        chain.append(ca_certificate(current))
    return chain


def issuer_for(ca: CARecord, keystore: KeyStore, urls: CAUrlsConfig) -> Issuer:
    """The signing context of a CA: certificate, signer and published URLs.

    Raises:
        ValidationError: ``ca.not_issuing`` for a root (roots sign only CAs),
        ``ca.retired`` for a CA that no longer issues.
    """
    if ca.tier != "issuing":
        raise ValidationError("ca.not_issuing", f"CA {ca.name!r} is a root and issues no leaves")
    if ca.status != "active":
        raise ValidationError("ca.retired", f"CA {ca.name!r} no longer issues certificates")
    return Issuer(
        certificate=ca_certificate(ca),
        signer=keystore.signer(ca.key_ref),
        crl_url=urls.crl_url(ca.id),
        ocsp_url=urls.ocsp_url(),
        ca_issuers_url=urls.ca_issuers_url(ca.id),
    )
