"""The issuance pipeline: a CSR and a template in, a signed leaf certificate out.

Issuance is a sequence of small policy steps, each a pure function that either
returns a value or raises a :class:`~fleetpki.errors.ValidationError` /
:class:`~fleetpki.errors.PermissionDenied` with a stable code:

1. ``check_key_policy``   - the CSR's key type is allowed by the template;
2. ``resolve_names``      - the subject CN and SANs, each a name the caller may request
                            and the template allows;
3. ``resolve_validity``   - not before / not after, capped by the template and the CA;
4. ``resolve_usages``     - key usages and EKUs within the template;
5. ``build_certificate``  - the RFC 5280 profile, signed by the issuer's signer;
6. ``check_certificate``  - the signed result is what was planned.

Nothing is signed until steps 1-4 have passed, so a refusal signs nothing.  The
caller (the issuance service) supplies the authorisation predicate, the clock and
the issuer; this module does no I/O.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fleetpki.errors import PermissionDenied, ValidationError
from fleetpki.keystore import PublicKey, Signer
from fleetpki.pki.csr import ParsedCSR, describe_key
from fleetpki.pki.extensions import authority_information_access, crl_distribution_points
from fleetpki.pki.keys import KeySpec
from fleetpki.pki.names import SanType, SubjectAltName, is_dns_name
from fleetpki.pki.profile import (
    KeyUsageName,
    Template,
    compatible_key_usages,
    default_key_usages,
    key_usage_extension,
)

__all__ = [
    "BACKDATE",
    "IssuanceRequest",
    "IssuedCertificate",
    "Issuer",
    "Plan",
    "build_certificate",
    "check_certificate",
    "check_key_policy",
    "issue_certificate",
    "resolve_names",
    "resolve_usages",
    "resolve_validity",
    "thumbprints",
]

#: Certificates start this long before "now" to absorb device clock skew.
BACKDATE = dt.timedelta(minutes=1)

NameAuthorizer = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Issuer:
    """The CA that signs: its certificate, its signer and the URLs it publishes.

    Attributes:
        certificate: the issuing CA certificate.
        signer: the CA key's signer.
        crl_url: goes into each leaf's CRL distribution point (RFC 5280 §4.2.1.13).
        ocsp_url / ca_issuers_url: go into the AIA extension (RFC 5280 §4.2.2.1).
    """

    certificate: x509.Certificate
    signer: Signer
    crl_url: str | None = None
    ocsp_url: str | None = None
    ca_issuers_url: str | None = None


@dataclass(frozen=True, slots=True)
class IssuanceRequest:
    """What a caller asks for.  ``None`` fields take the template's defaults.

    Attributes:
        csr: the parsed, signature-checked CSR.
        validity_days: requested lifetime in days.
        subject_cn: overrides the CSR's CN (EZCA's ``SubjectName``).
        subject_alt_names: override the CSR's SANs (EZCA's ``SubjectAltNames``).
        ekus: dotted OIDs.
        key_usages: key usage names.
    """

    csr: ParsedCSR
    validity_days: int | None = None
    subject_cn: str | None = None
    subject_alt_names: tuple[SubjectAltName, ...] | None = None
    ekus: tuple[str, ...] | None = None
    key_usages: tuple[KeyUsageName, ...] | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the certificate will contain, decided before anything is signed."""

    public_key: PublicKey
    key_spec: KeySpec
    common_name: str | None
    subject_alt_names: tuple[SubjectAltName, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    key_usages: tuple[KeyUsageName, ...]
    ekus: tuple[str, ...]
    local_names: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A signed certificate with the facts the store indexes."""

    certificate: x509.Certificate
    der: bytes
    serial_hex: str
    sha1_hex: str
    sha256_hex: str
    common_name: str | None
    subject_alt_names: tuple[SubjectAltName, ...]
    not_before: dt.datetime
    not_after: dt.datetime

    @property
    def pem(self) -> str:
        """The certificate as PEM text."""
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()


def thumbprints(der: bytes) -> tuple[str, str]:
    """The SHA-1 and SHA-256 thumbprints of a DER certificate, as upper-case hex.

    Upper case is how .NET and Azure print thumbprints; compare case-insensitively.
    """
    return hashlib.sha1(der).hexdigest().upper(), hashlib.sha256(der).hexdigest().upper()  # noqa: S324


def check_key_policy(csr: ParsedCSR, template: Template) -> KeySpec:
    """Step 1: the CSR key must be RSA >= 2048, EC P-256/P-384, or Ed25519 where allowed.

    Raises:
        ValidationError: ``csr.weak_key`` (small RSA), ``csr.unsupported_key`` (other
        curves or algorithms), ``template.key_type_not_allowed``.
    """
    spec = csr.key_spec
    if spec is None:
        described = describe_key(csr.public_key)
        if described.startswith("RSA-"):
            raise ValidationError(
                "csr.weak_key", f"{described} is too weak: RSA keys must be 2048 bits or more"
            )
        raise ValidationError(
            "csr.unsupported_key", f"{described} keys are not supported; use RSA, P-256 or P-384"
        )
    if spec not in template.allowed_key_specs:
        allowed = ", ".join(sorted(s.value for s in template.allowed_key_specs))
        raise ValidationError(
            "template.key_type_not_allowed",
            f"template {template.name!r} does not allow {spec.value} keys (allowed: {allowed})",
        )
    return spec


def resolve_names(
    request: IssuanceRequest, template: Template, may_request: NameAuthorizer
) -> tuple[str | None, tuple[SubjectAltName, ...]]:
    """Step 2: the CN and SANs, each one a domain the caller may request.

    When no SAN is given and the CN is a DNS name, the CN is added as a DNS SAN
    (RFC 6125 §6.4.4: clients match SANs, not the CN).  When the CN is a device id
    that is not a DNS name, a DNS SAN equal to it is dropped: the CN names the device.

    Raises:
        ValidationError: ``csr.no_names``, ``san.invalid``, ``template.domain_restricted``.
        PermissionDenied: ``domain.not_requester`` for a name the caller may not request.
    """
    cn = request.subject_cn if request.subject_cn is not None else request.csr.common_name
    if cn is not None:
        cn = cn.strip() or None
    sans = (
        request.subject_alt_names
        if request.subject_alt_names is not None
        else request.csr.subject_alt_names
    )
    if cn is not None and not is_dns_name(cn):
        # A single-label device id (a GUID) is not a DNS name (see names.is_dns_name):
        # the CN carries it, and a DNS SAN repeating it is folded into the CN.
        sans = tuple(s for s in sans if not (s.type is SanType.DNS and s.value == cn))
    if not sans and cn is not None and is_dns_name(cn):
        sans = (SubjectAltName(SanType.DNS, cn),)
    if cn is None and not sans:
        raise ValidationError("csr.no_names", "the request names no subject CN and no SAN")
    for san in sans:
        san.to_general_name(local_names=template.local_names)  # san.invalid when malformed
    names = ([cn] if cn is not None else []) + [san.authorization_name for san in sans]
    for name in dict.fromkeys(names):
        if not template.allows_name(name):
            raise ValidationError(
                "template.domain_restricted",
                f"{name!r} is outside the domain restrictions of template {template.name!r}",
            )
        if not may_request(name):
            raise PermissionDenied(
                "domain.not_requester",
                f"the caller is not a requester of a registered domain {name!r}",
            )
    # Duplicates add nothing to a certificate; keep the first of each.
    return cn, tuple(dict.fromkeys(sans))


def resolve_validity(
    request: IssuanceRequest, template: Template, issuer: Issuer, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """Step 3: validity within the template maximum, ending no later than the CA.

    Raises:
        ValidationError: ``request.bad_validity`` (under one day),
        ``template.validity_exceeded`` (over the template maximum), ``ca.expired``.
    """
    days = (
        request.validity_days if request.validity_days is not None else template.max_validity_days
    )
    if days < 1:
        raise ValidationError("request.bad_validity", "validity must be at least 1 day")
    if days > template.max_validity_days:
        raise ValidationError(
            "template.validity_exceeded",
            f"{days} days exceeds the template maximum of {template.max_validity_days} days",
        )
    ca_start = issuer.certificate.not_valid_before_utc
    ca_end = issuer.certificate.not_valid_after_utc
    if now >= ca_end:
        raise ValidationError("ca.expired", "the issuing CA has expired")
    not_before = max(now - BACKDATE, ca_start)
    # RFC 5280 §6.1.3 does not forbid a leaf outliving its CA, but it could never
    # validate after the CA expires; cap it instead of issuing a misleading date.
    not_after = min(now + dt.timedelta(days=days), ca_end)
    return not_before.replace(microsecond=0), not_after.replace(microsecond=0)


def resolve_usages(
    request: IssuanceRequest, template: Template, spec: KeySpec
) -> tuple[tuple[KeyUsageName, ...], tuple[str, ...]]:
    """Step 4: key usages and EKUs within the template and fit for the key type.

    Usages the key type cannot carry (key encipherment on an EC key, RFC 5480 §3)
    are dropped, because EZCA clients send RSA defaults whatever the key.

    Raises:
        ValidationError: ``template.eku_not_allowed``, ``template.key_usage_not_allowed``,
        ``template.key_usage_mismatch`` when nothing usable remains.
    """
    ekus = request.ekus if request.ekus is not None else template.default_ekus
    for eku in ekus:
        if eku not in template.allowed_ekus:
            raise ValidationError(
                "template.eku_not_allowed",
                f"extended key usage {Template.eku_name(eku)} is not allowed by the template",
            )
    if request.key_usages is None:
        usages = default_key_usages(spec)
    else:
        for usage in request.key_usages:
            if usage not in template.allowed_key_usages:
                raise ValidationError(
                    "template.key_usage_not_allowed",
                    f"key usage {usage.value!r} is not allowed by the template",
                )
        fit = compatible_key_usages(spec)
        usages = tuple(u for u in dict.fromkeys(request.key_usages) if u in fit)
        if not usages:
            raise ValidationError(
                "template.key_usage_mismatch",
                f"none of the requested key usages fits a {spec.value} key",
            )
    return usages, tuple(dict.fromkeys(ekus))


def _ski_of(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def build_certificate(plan: Plan, issuer: Issuer) -> x509.Certificate:
    """Step 5: build the leaf per RFC 5280 §4.2 and sign it with the issuer's signer."""
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, plan.common_name)] if plan.common_name else []
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(plan.public_key)
        # RFC 5280 §4.1.2.2: positive, at most 20 octets; 159 random bits.
        .serial_number(x509.random_serial_number())
        .not_valid_before(plan.not_before)
        .not_valid_after(plan.not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage_extension(plan.key_usages), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(plan.public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                _ski_of(issuer.certificate)
            ),
            critical=False,
        )
    )
    if plan.ekus:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.ObjectIdentifier(oid) for oid in plan.ekus]), critical=False
        )
    if plan.subject_alt_names:
        # RFC 5280 §4.2.1.6: critical when the subject is empty.
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    san.to_general_name(local_names=plan.local_names)
                    for san in plan.subject_alt_names
                ]
            ),
            critical=not plan.common_name,
        )
    if issuer.crl_url:
        builder = builder.add_extension(crl_distribution_points(issuer.crl_url), critical=False)
    aia = authority_information_access(
        ocsp_url=issuer.ocsp_url, ca_issuers_url=issuer.ca_issuers_url
    )
    if aia is not None:
        builder = builder.add_extension(aia, critical=False)
    return issuer.signer.sign_certificate(builder)


def check_certificate(cert: x509.Certificate, plan: Plan, issuer: Issuer) -> None:
    """Step 6: the signed certificate verifies under the CA and carries the plan.

    Raises:
        ValidationError: ``issuance.check_failed`` when the result differs from the plan
        (a broken signer or keystore, never the caller's fault).
    """
    try:
        cert.verify_directly_issued_by(issuer.certificate)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ValidationError(
            "issuance.check_failed", "the signed certificate does not verify under its CA"
        ) from exc
    if cert.public_key() != plan.public_key or cert.not_valid_after_utc != plan.not_after:
        raise ValidationError(
            "issuance.check_failed", "the signed certificate differs from its plan"
        )


def issue_certificate(
    request: IssuanceRequest,
    template: Template,
    issuer: Issuer,
    *,
    may_request: NameAuthorizer,
    now: dt.datetime,
) -> IssuedCertificate:
    """Run the whole pipeline and return the signed certificate.

    Args:
        request: the CSR and the caller's choices.
        template: the profile that bounds them.
        issuer: the signing CA.
        may_request: says whether the caller may request a name (a registered domain
            where the caller is a requester).
        now: the current time (injected so tests control the clock).

    Raises:
        ValidationError, PermissionDenied: see each step; nothing is signed then.
    """
    spec = check_key_policy(request.csr, template)
    cn, sans = resolve_names(request, template, may_request)
    not_before, not_after = resolve_validity(request, template, issuer, now)
    usages, ekus = resolve_usages(request, template, spec)
    plan = Plan(
        public_key=request.csr.public_key,
        key_spec=spec,
        common_name=cn,
        subject_alt_names=sans,
        not_before=not_before,
        not_after=not_after,
        key_usages=usages,
        ekus=ekus,
        local_names=template.local_names,
    )
    cert = build_certificate(plan, issuer)
    check_certificate(cert, plan, issuer)
    der = cert.public_bytes(serialization.Encoding.DER)
    sha1, sha256 = thumbprints(der)
    return IssuedCertificate(
        certificate=cert,
        der=der,
        serial_hex=format(cert.serial_number, "X"),
        sha1_hex=sha1,
        sha256_hex=sha256,
        common_name=cn,
        subject_alt_names=sans,
        not_before=not_before,
        not_after=not_after,
    )


def sans_for_display(sans: Sequence[SubjectAltName]) -> list[str]:
    """SANs as ``DNS:name`` strings, the way openssl prints them."""
    return [f"{san.type.name}:{san.value}" for san in sans]
