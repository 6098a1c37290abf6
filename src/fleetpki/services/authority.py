"""CAs and templates: the hierarchy, the one rule for which CA issues, issuers and chains.

Which CA issues when a caller names none is decided here and only here
(:func:`current_issuer`): the CA's state decides, not the order CAs happen to be
listed in.
"""

from __future__ import annotations

import builtins
import datetime as dt
import uuid
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

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
from fleetpki.pki.keys import CA_KEY_SPECS, KeySpec
from fleetpki.pki.profile import DEFAULT_MAX_VALIDITY_DAYS, KeyUsageName, Template
from fleetpki.services.audit import write_audit
from fleetpki.services.ca_generations import (
    ACTIVE,
    generation_of,
    generation_record,
    link_certificates,
    signing_generation,
)
from fleetpki.services.ca_views import (
    CAView,
    HierarchyView,
    IssuerOfferView,
    TemplateView,
    ca_view,
    template_view,
)
from fleetpki.services.context import LOCAL_ADMIN_ID, Actor, Clock
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.store.models import CARecord, Principal, TemplateRecord

__all__ = [
    "CAService",
    "CAUrlsConfig",
    "HierarchySpec",
    "TemplateService",
    "ca_certificate",
    "ca_record",
    "canonical_id",
    "current_issuer",
    "is_current_issuer",
    "issuer_for",
    "template_for",
    "template_from_record",
    "template_record",
    "template_record_of",
]


@dataclass(frozen=True, slots=True)
class CAUrlsConfig:
    """The public base URL under which CRLs, OCSP and CA certificates are served."""

    public_url: str

    def crl_url(self, ca_id: str, generation: int = 1) -> str:
        """The CRL of a CA's generation (RFC 5280 §4.2.1.13); the first keeps the plain URL."""
        base = f"{self.public_url.rstrip('/')}/crl/{ca_id}"
        return f"{base}.crl" if generation == 1 else f"{base}/{generation}.crl"

    def ocsp_url(self) -> str:
        """The OCSP responder (RFC 6960 §2.1, reached through AIA)."""
        return f"{self.public_url.rstrip('/')}/ocsp"

    def ca_issuers_url(self, ca_id: str, generation: int = 1) -> str:
        """A CA generation's certificate in DER (RFC 5280 §4.2.2.1 caIssuers)."""
        base = f"{self.public_url.rstrip('/')}/ca/{ca_id}"
        return f"{base}.cer" if generation == 1 else f"{base}/{generation}.cer"


@dataclass(frozen=True, slots=True)
class HierarchySpec:
    """What ``fleetpki init`` creates."""

    name: str = "fleetpki"
    root_key: KeySpec = KeySpec.EC_P384
    issuing_key: KeySpec = KeySpec.EC_P256
    root_days: int = DEFAULT_ROOT_DAYS
    issuing_days: int = DEFAULT_ISSUING_DAYS
    max_validity_days: int = DEFAULT_MAX_VALIDITY_DAYS


# -- code shared by use cases: runs inside the caller's unit of work ---------------------


def canonical_id(value: str, what: str) -> str:
    """The canonical form of a GUID id.

    Raises:
        NotFoundError: ``{what}.not_found`` when ``value`` is not a GUID.
    """
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise NotFoundError(f"{what}.not_found", f"no {what} {value!r} (not a GUID)") from None


def ca_record(tx: UnitOfWork, ca_id: str) -> CARecord:
    """The CA with this id, in the caller's unit of work.

    Raises:
        NotFoundError: ``ca.not_found``.
    """
    ca = tx.cas.get(canonical_id(ca_id, "ca"))
    if ca is None:
        raise NotFoundError("ca.not_found", f"no CA {ca_id}")
    return ca


def template_record_of(
    tx: UnitOfWork, template_id: str, ca_id: str | None = None
) -> TemplateRecord:
    """The template with this id, optionally checked to belong to ``ca_id`` (caller's unit).

    Raises:
        NotFoundError: ``template.not_found``.
    """
    record = tx.templates.get(canonical_id(template_id, "template"))
    if record is None or (ca_id is not None and record.ca_id != ca_id):
        raise NotFoundError("template.not_found", f"no template {template_id} for that CA")
    return record


def template_for(tx: UnitOfWork, ca: CARecord, template_id: str | None) -> TemplateRecord:
    """The template a request to ``ca`` uses: the one named, or the CA's first (caller's unit).

    Raises:
        NotFoundError: ``template.not_found``.
    """
    if template_id is not None:
        return template_record_of(tx, template_id, ca.id)
    templates = tx.templates.all(ca.id)
    if not templates:
        raise NotFoundError("template.not_found", f"CA {ca.name!r} has no template")
    return templates[0]


def is_current_issuer(ca: CARecord, now: dt.datetime) -> bool:
    """Whether ``ca`` may issue leaves now: an active issuing CA inside its validity."""
    return ca.tier == "issuing" and ca.status == "active" and ca.not_before <= now < ca.not_after


def current_issuer(tx: UnitOfWork, now: dt.datetime) -> CARecord:
    """The CA that issues when a request names none: the one rule (caller's unit of work).

    Among the CAs whose state lets them issue now (status active, tier issuing, inside
    their validity), the one with the newest ``not_before``: a renewed issuing CA takes
    over from the one it replaces as soon as it is valid. Creation time and id break a
    tie only so that every process picks the same one.

    Raises:
        NotFoundError: ``ca.no_current_issuer`` when no CA may issue now.
    """
    candidates = [ca for ca in tx.cas.all() if is_current_issuer(ca, now)]
    if not candidates:
        raise NotFoundError(
            "ca.no_current_issuer",
            "no issuing CA is active and valid now: name a CA, or create or renew one",
        )
    return max(candidates, key=lambda ca: (ca.not_before, ca.created_at, ca.id))


def ca_certificate(ca: CARecord | CAView) -> x509.Certificate:
    """The CA's certificate object."""
    return x509.load_der_x509_certificate(ca.certificate_der)


def ca_chain_of(
    tx: UnitOfWork, ca: CARecord, generation: int | None = None
) -> list[x509.Certificate]:
    """The CA's certificate followed by its parents up to the root (caller's unit).

    ``generation`` picks the CA's certificate (default: the active one); each parent
    is the generation that signed the one below it (see
    :func:`~fleetpki.services.ca_generations.signing_generation`). While a root
    rollover is under way, the root's link certificates follow the root, so a relying
    party that holds either root generation finds a path.
    """
    current_ca = ca
    current = generation_of(ca, generation if generation is not None else ca.generation)
    if current is None:
        raise NotFoundError(
            "ca.generation_missing", f"CA {ca.name!r} has no generation {generation}"
        )
    chain = [x509.load_der_x509_certificate(current.certificate_der)]
    while current_ca.parent_id is not None:
        parent = ca_record(tx, current_ca.parent_id)
        current = signing_generation(parent, current.parent_generation)
        current_ca = parent
        chain.append(x509.load_der_x509_certificate(current.certificate_der))
    chain.extend(link_certificates(current_ca, current))
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
        crl_url=urls.crl_url(ca.id, ca.generation),
        ocsp_url=urls.ocsp_url(),
        ca_issuers_url=urls.ca_issuers_url(ca.id, ca.generation),
    )


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
    first = generation_record(
        ca_id,
        1,
        ACTIVE,
        cert,
        key_ref,
        spec,
        key_created_at=now,
        now=now,
        parent_generation=1 if parent_id is not None else None,
    )
    first.activated_at = now
    return CARecord(
        id=ca_id,
        generation=1,
        generations=[first],
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


def _new_hierarchy(
    keystore: KeyStore,
    urls: CAUrlsConfig,
    spec: HierarchySpec,
    root_id: str,
    issuing_id: str,
    made: list[str],
    *,
    now: dt.datetime,
) -> tuple[CARecord, CARecord]:
    """The root and issuing CA records, their keys generated in the keystore.

    ``made`` collects the references of the keys generated, for the caller to discard
    should the creation fail.
    """
    root_signer = keystore.generate(spec.root_key)
    made.append(root_signer.key_ref)
    root_cert = build_root_ca(
        root_signer, ca_name(f"{spec.name} Root CA", spec.name), now=now, days=spec.root_days
    )
    issuing_signer = keystore.generate(spec.issuing_key)
    made.append(issuing_signer.key_ref)
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
    return root, issuing


def create_hierarchy_in(
    tx: UnitOfWork,
    actor: Actor,
    keystore: KeyStore,
    urls: CAUrlsConfig,
    spec: HierarchySpec,
    *,
    now: dt.datetime,
) -> tuple[CARecord, CARecord, TemplateRecord]:
    """Create a root CA, an issuing CA signed by it and the default template (caller's unit).

    Raises:
        ValidationError: ``ca.bad_key_type`` for a key type a CA may not have.
    """
    for key_spec in (spec.root_key, spec.issuing_key):
        if key_spec not in CA_KEY_SPECS:
            raise ValidationError("ca.bad_key_type", f"a CA key cannot be {key_spec.value}")
    root_id, issuing_id = str(uuid.uuid4()), str(uuid.uuid4())
    made: list[str] = []
    try:
        root, issuing = _new_hierarchy(keystore, urls, spec, root_id, issuing_id, made, now=now)
    except BaseException:
        # The keys were generated for CAs that will not exist (nothing was committed).
        for key_ref in made:
            keystore.discard(key_ref)
        raise
    tx.cas.add(root)
    tx.cas.add(issuing)
    template = Template(template_id=str(uuid.uuid4()), max_validity_days=spec.max_validity_days)
    record = template_record(template, issuing_id, now)
    tx.templates.add(record)
    for ca in (root, issuing):
        write_audit(
            tx,
            actor,
            "ca.create",
            "ca",
            ca.id,
            at=now,
            details={"name": ca.name, "tier": ca.tier, "key": ca.key_spec, "subject": ca.subject},
        )
    write_audit(
        tx,
        actor,
        "template.create",
        "template",
        record.id,
        at=now,
        details={"ca_id": issuing_id, "name": record.name},
    )
    return root, issuing, record


# -- the use cases -----------------------------------------------------------------------


class CAService:
    """Certificate authorities: the hierarchy, listing, chains and the current issuer.

    Args:
        store: the database.
        keystore: custody of CA keys.
        clock: the source of "now".
        urls: where CRLs, OCSP and CA certificates are published.
    """

    def __init__(self, store: Store, keystore: KeyStore, clock: Clock, urls: CAUrlsConfig) -> None:
        self._store = store
        self._keystore = keystore
        self._clock = clock
        self._urls = urls

    def create_hierarchy(self, actor: Actor, spec: HierarchySpec) -> HierarchyView:
        """Create a root CA, an issuing CA signed by it and the default IoT device template.

        Raises:
            ValidationError: ``ca.bad_key_type``.
        """
        with self._store.transaction() as tx:
            root, issuing, template = create_hierarchy_in(
                tx, actor, self._keystore, self._urls, spec, now=self._clock()
            )
            return HierarchyView(ca_view(root), ca_view(issuing), template_view(template))

    def bootstrap(self, spec: HierarchySpec) -> HierarchyView:
        """A new home's first unit of work: the local admin and the first CA hierarchy.

        Raises:
            ValidationError: ``ca.bad_key_type``.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            if tx.principals.get(LOCAL_ADMIN_ID) is None:
                tx.principals.add(
                    Principal(
                        id=LOCAL_ADMIN_ID,
                        friendly_name="local admin",
                        principal_type="User",
                        is_admin=True,
                        created_at=now,
                    )
                )
            root, issuing, template = create_hierarchy_in(
                tx, Actor.local_admin(), self._keystore, self._urls, spec, now=now
            )
            return HierarchyView(ca_view(root), ca_view(issuing), template_view(template))

    def check_keys(self) -> int:
        """Load the key of every CA generation from the keystore; return how many there are.

        ``fleetpki serve`` calls this at startup, so that a key the keystore lacks (a
        token other than the one that holds it, a deleted key file) or cannot open is
        reported then, not at the first issuance, CRL or OCSP answer. Every generation
        counts, retired ones too: their CRLs and OCSP answers are still signed. The
        keystore is asked outside the unit of work.

        Raises:
            NotFoundError: ``keystore.key_missing`` naming the CA and generation.
            ValidationError: ``keystore.key_mismatch`` when the keystore's key is not the
                one in the generation's certificate; ``keystore.bad_passphrase``.
        """
        with self._store.transaction() as tx:
            keys = {
                g.key_ref: (ca.name, g.number, g.certificate_der)
                for ca in tx.cas.all()
                for g in ca.generations
            }
        for key_ref, (name, number, der) in keys.items():
            try:
                signer = self._keystore.signer(key_ref)
            except NotFoundError as exc:
                raise NotFoundError(
                    "keystore.key_missing",
                    f"the key of CA {name!r} generation {number} ({key_ref}) is not in the "
                    f"keystore: {exc.message}",
                ) from exc
            if signer.public_key() != x509.load_der_x509_certificate(der).public_key():
                raise ValidationError(
                    "keystore.key_mismatch",
                    f"the keystore's key {key_ref} is not the key of CA {name!r} "
                    f"generation {number}",
                )
        return len(keys)

    def list(self) -> builtins.list[CAView]:
        """Every CA, roots first."""
        with self._store.reading() as tx:
            return [ca_view(ca) for ca in tx.cas.all()]

    def get(self, ca_id: str) -> CAView:
        """One CA.

        Raises:
            NotFoundError: ``ca.not_found``.
        """
        with self._store.reading() as tx:
            return ca_view(ca_record(tx, ca_id))

    def chain(self, ca_id: str) -> builtins.list[x509.Certificate]:
        """The CA's certificate followed by its parents up to the root.

        Raises:
            NotFoundError: ``ca.not_found``.
        """
        with self._store.reading() as tx:
            return ca_chain_of(tx, ca_record(tx, ca_id))

    def current_issuer(self) -> CAView:
        """The CA that issues when a request names none (see :func:`current_issuer`).

        Raises:
            NotFoundError: ``ca.no_current_issuer``.
        """
        with self._store.reading() as tx:
            return ca_view(current_issuer(tx, self._clock()))

    def issuing_chain(self, ca_id: str | None = None) -> builtins.list[x509.Certificate]:
        """The chain of the issuing CA ``ca_id``, or of the current issuer when ``None``.

        Raises:
            NotFoundError: ``ca.not_found``, ``ca.no_current_issuer``.
            ValidationError: ``ca.not_issuing`` when ``ca_id`` names a root.
        """
        with self._store.transaction() as tx:
            if ca_id is None:
                ca = current_issuer(tx, self._clock())
            else:
                ca = ca_record(tx, ca_id)
                if ca.tier != "issuing":
                    raise ValidationError("ca.not_issuing", "that CA is a root")
            return ca_chain_of(tx, ca)

    def issuer_offers(self) -> builtins.list[IssuerOfferView]:
        """Every CA that may issue now, with each of its templates."""
        now = self._clock()
        with self._store.transaction() as tx:
            return [
                IssuerOfferView(ca_view(ca), template_view(t))
                for ca in tx.cas.all()
                if is_current_issuer(ca, now)
                for t in tx.templates.all(ca.id)
            ]


class TemplateService:
    """Issuance templates.

    Args:
        store: the database.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def list(self, ca_id: str | None = None) -> builtins.list[TemplateView]:
        """Templates, optionally of one CA, oldest first."""
        with self._store.transaction() as tx:
            return [template_view(t) for t in tx.templates.all(ca_id)]

    def get(self, template_id: str) -> TemplateView:
        """One template.

        Raises:
            NotFoundError: ``template.not_found``.
        """
        with self._store.transaction() as tx:
            return template_view(template_record_of(tx, template_id))
