"""Issuance profiles (templates): what a CA may put in the certificates it issues.

A template is stored data.  This module holds its immutable domain form and the
closed sets it is made of: key usages with the names EZCA clients send, and
extended key usages by OID or short name.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fleetpki.errors import ValidationError
from fleetpki.pki.extensions import key_usage
from fleetpki.pki.keys import KeySpec

__all__ = [
    "ALL_LEAF_KEY_SPECS",
    "DEFAULT_EKUS",
    "DEFAULT_MAX_VALIDITY_DAYS",
    "EKU_NAMES",
    "KeyUsageName",
    "Template",
    "compatible_key_usages",
    "default_key_usages",
    "key_usage_extension",
    "parse_eku",
]

#: Default maximum validity of the IoT device template.
DEFAULT_MAX_VALIDITY_DAYS = 365

#: Short names accepted for extended key usages, with the OIDs they stand for.
EKU_NAMES: dict[str, str] = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH.dotted_string,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING.dotted_string,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION.dotted_string,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING.dotted_string,
}
_EKU_BY_OID = {oid: name for name, oid in EKU_NAMES.items()}

#: Server and client authentication, what an IoT device certificate needs.
DEFAULT_EKUS: tuple[str, ...] = (EKU_NAMES["serverAuth"], EKU_NAMES["clientAuth"])


def parse_eku(text: str) -> str:
    """Return the dotted OID for an EKU given by short name or dotted OID.

    Raises:
        ValidationError: ``template.bad_eku`` for anything else.
    """
    value = text.strip()
    if value in EKU_NAMES:
        return EKU_NAMES[value]
    parts = value.split(".")
    if len(parts) >= 2 and all(part.isdigit() for part in parts) and parts[0] in "012":
        return value
    raise ValidationError(
        "template.bad_eku", f"unknown extended key usage {text!r}; use a dotted OID or a name"
    )


class KeyUsageName(enum.Enum):
    """Key usage bits (RFC 5280 §4.2.1.3) that a leaf may carry, with EZCA's names."""

    DIGITAL_SIGNATURE = "Digital Signature"
    NON_REPUDIATION = "Non Repudiation"
    KEY_ENCIPHERMENT = "Key Encipherment"
    DATA_ENCIPHERMENT = "Data Encipherment"
    KEY_AGREEMENT = "Key Agreement"

    @classmethod
    def parse(cls, text: str) -> KeyUsageName:
        """Parse ``Digital Signature``, ``digitalSignature`` or ``digital_signature``.

        Raises:
            ValidationError: ``template.bad_key_usage`` for unknown names.
        """
        squashed = text.replace(" ", "").replace("_", "").lower()
        for member in cls:
            if member.value.replace(" ", "").lower() == squashed:
                return member
        raise ValidationError("template.bad_key_usage", f"unknown key usage {text!r}")

    @property
    def camel(self) -> str:
        """The RFC 5280 ASN.1 name, e.g. ``digitalSignature``."""
        words = self.value.split(" ")
        return words[0].lower() + "".join(words[1:])


# Which key usage bits each key family may carry: RFC 3279 §2.3.1 (RSA),
# RFC 5480 §3 (ECDSA: no key or data encipherment), RFC 8410 §5 (Ed25519).
_COMPATIBLE: dict[str, frozenset[KeyUsageName]] = {
    "rsa": frozenset(
        {
            KeyUsageName.DIGITAL_SIGNATURE,
            KeyUsageName.NON_REPUDIATION,
            KeyUsageName.KEY_ENCIPHERMENT,
            KeyUsageName.DATA_ENCIPHERMENT,
        }
    ),
    "ec": frozenset(
        {KeyUsageName.DIGITAL_SIGNATURE, KeyUsageName.NON_REPUDIATION, KeyUsageName.KEY_AGREEMENT}
    ),
    "ed25519": frozenset({KeyUsageName.DIGITAL_SIGNATURE, KeyUsageName.NON_REPUDIATION}),
}


def compatible_key_usages(spec: KeySpec) -> frozenset[KeyUsageName]:
    """The key usage bits a key of ``spec`` may carry."""
    if spec.is_rsa:
        return _COMPATIBLE["rsa"]
    if spec.is_ec:
        return _COMPATIBLE["ec"]
    return _COMPATIBLE["ed25519"]


def default_key_usages(spec: KeySpec) -> tuple[KeyUsageName, ...]:
    """digitalSignature + keyEncipherment for RSA, digitalSignature otherwise."""
    if spec.is_rsa:
        return (KeyUsageName.DIGITAL_SIGNATURE, KeyUsageName.KEY_ENCIPHERMENT)
    return (KeyUsageName.DIGITAL_SIGNATURE,)


def key_usage_extension(usages: Iterable[KeyUsageName]) -> x509.KeyUsage:
    """Build the KeyUsage extension value for a leaf from its usage names."""
    chosen = set(usages)
    return key_usage(
        digital_signature=KeyUsageName.DIGITAL_SIGNATURE in chosen,
        content_commitment=KeyUsageName.NON_REPUDIATION in chosen,
        key_encipherment=KeyUsageName.KEY_ENCIPHERMENT in chosen,
        data_encipherment=KeyUsageName.DATA_ENCIPHERMENT in chosen,
        key_agreement=KeyUsageName.KEY_AGREEMENT in chosen,
    )


_ALL_LEAF_SPECS = frozenset(KeySpec)
_DEFAULT_LEAF_SPECS = frozenset(spec for spec in KeySpec if spec is not KeySpec.ED25519)


@dataclass(frozen=True, slots=True)
class Template:
    """An issuance profile: limits and defaults for certificates from one CA.

    Attributes:
        template_id: a GUID, as EZCA's ``TemplateID``.
        name: a friendly name, e.g. ``IoT Device``.
        template_type: EZCA's ``CATemplateType`` text, e.g. ``SSL Template``.
        max_validity_days: the longest validity a request may ask for.
        allowed_key_specs: key types a CSR may carry; Ed25519 only when listed.
        default_ekus / allowed_ekus: dotted OIDs.
        allowed_key_usages: the key usage bits a request may ask for.
        domain_restrictions: glob patterns every name must match; empty allows any.
        auto_renew_percentage: when devices should renew, in percent of lifetime.
        local_names: single-label host names (lower case) allowed as DNS SANs although
            they are not DNS names (see :func:`fleetpki.pki.names.is_dns_name`): only the
            server profile has one, ``localhost``, so https://localhost verifies.
    """

    template_id: str
    name: str = "IoT Device"
    template_type: str = "SSL Template"
    max_validity_days: int = DEFAULT_MAX_VALIDITY_DAYS
    allowed_key_specs: frozenset[KeySpec] = _DEFAULT_LEAF_SPECS
    default_ekus: tuple[str, ...] = DEFAULT_EKUS
    allowed_ekus: frozenset[str] = frozenset(DEFAULT_EKUS)
    allowed_key_usages: frozenset[KeyUsageName] = frozenset(KeyUsageName)
    domain_restrictions: tuple[str, ...] = field(default=())
    auto_renew_percentage: int = 66
    local_names: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.max_validity_days < 1:
            raise ValidationError(
                "template.bad_validity", "a template's maximum validity must be at least 1 day"
            )
        if not 1 <= self.auto_renew_percentage <= 99:
            raise ValidationError(
                "template.bad_renew_percentage", "auto-renew percentage must be within 1-99"
            )
        if not set(self.default_ekus) <= self.allowed_ekus:
            raise ValidationError(
                "template.bad_eku", "a template's default EKUs must be among its allowed EKUs"
            )

    def with_changes(self, **changes: object) -> Template:
        """Return a copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def allows_name(self, name: str) -> bool:
        """Whether ``name`` matches the domain restrictions (case-insensitive globs)."""
        if not self.domain_restrictions:
            return True
        lowered = name.lower()
        return any(fnmatch.fnmatchcase(lowered, pat.lower()) for pat in self.domain_restrictions)

    @staticmethod
    def eku_name(oid: str) -> str:
        """A short name for an EKU OID when one is known, else the OID."""
        return _EKU_BY_OID.get(oid, oid)


#: Every key spec, for templates that allow Ed25519 leaves.
ALL_LEAF_KEY_SPECS = _ALL_LEAF_SPECS
