"""CA certificates: self-signed roots and subordinate (issuing) CAs, RFC 5280 profile."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from fleetpki.errors import ValidationError
from fleetpki.keystore import Signer
from fleetpki.pki.extensions import (
    authority_information_access,
    crl_distribution_points,
    key_usage,
)
from fleetpki.pki.issuance import BACKDATE

__all__ = [
    "DEFAULT_ISSUING_DAYS",
    "DEFAULT_ROOT_DAYS",
    "CAUrls",
    "build_cross_certificate",
    "build_root_ca",
    "build_subordinate_ca",
    "ca_name",
]

#: Root CAs live 20 years, issuing CAs 5; both renewable long before expiry.
DEFAULT_ROOT_DAYS = 20 * 365
DEFAULT_ISSUING_DAYS = 5 * 365


@dataclass(frozen=True, slots=True)
class CAUrls:
    """Where a parent CA publishes what a child's certificate points to."""

    crl_url: str | None = None
    ca_issuers_url: str | None = None


def ca_name(common_name: str, organization: str | None = None) -> x509.Name:
    """A CA distinguished name: ``CN`` and an optional ``O``.

    Raises:
        ValidationError: ``ca.bad_name`` for an empty or over-long CN (RFC 5280
        upper bound ub-common-name is 64 characters).
    """
    if not common_name.strip() or len(common_name) > 64:
        raise ValidationError("ca.bad_name", "a CA common name must be 1-64 characters")
    attributes = []
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization[:64]))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _ca_key_usage() -> x509.KeyUsage:
    # RFC 5280 §4.2.1.3: keyCertSign and cRLSign for a CA; digitalSignature lets
    # the CA key sign OCSP responses directly (RFC 6960 §4.2.2.2).
    return key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True)


def build_root_ca(
    signer: Signer, subject: x509.Name, *, now: dt.datetime, days: int = DEFAULT_ROOT_DAYS
) -> x509.Certificate:
    """Build a self-signed root CA certificate for ``signer``'s key."""
    public_key = signer.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before((now - BACKDATE).replace(microsecond=0))
        .not_valid_after((now + dt.timedelta(days=days)).replace(microsecond=0))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    return signer.sign_certificate(builder)


def build_subordinate_ca(
    parent_cert: x509.Certificate,
    parent_signer: Signer,
    signer: Signer,
    subject: x509.Name,
    *,
    now: dt.datetime,
    days: int = DEFAULT_ISSUING_DAYS,
    path_length: int | None = 0,
    urls: CAUrls | None = None,
) -> x509.Certificate:
    """Build a CA certificate for ``signer``'s key, signed by the parent CA.

    The validity is capped at the parent's own expiry.

    Raises:
        ValidationError: ``ca.expired`` when the parent has expired.
    """
    parent_end = parent_cert.not_valid_after_utc
    if now >= parent_end:
        raise ValidationError("ca.expired", "the parent CA has expired")
    public_key = signer.public_key()
    parent_ski = parent_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(parent_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(
            max(now - BACKDATE, parent_cert.not_valid_before_utc).replace(microsecond=0)
        )
        .not_valid_after(min(now + dt.timedelta(days=days), parent_end).replace(microsecond=0))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(parent_ski),
            critical=False,
        )
    )
    if urls and urls.crl_url:
        builder = builder.add_extension(crl_distribution_points(urls.crl_url), critical=False)
    aia = authority_information_access(ca_issuers_url=urls.ca_issuers_url if urls else None)
    if aia is not None:
        builder = builder.add_extension(aia, critical=False)
    return parent_signer.sign_certificate(builder)


def build_cross_certificate(
    subject_cert: x509.Certificate,
    issuer_cert: x509.Certificate,
    issuer_signer: Signer,
    *,
    now: dt.datetime,
) -> x509.Certificate:
    """Certify ``subject_cert``'s key and name with another key of the same CA.

    The link certificates of a root rollover (RFC 4210 §4.4): with the old root as
    ``issuer_cert`` it is NewWithOld (the new key under the old, for relying parties
    that hold only the old root), with the new root as ``issuer_cert`` OldWithNew. The
    subject, key, key identifier and CA constraints are the subject certificate's;
    issuer and authority key identifier are the issuer's; the validity is the overlap
    of the two.

    Raises:
        ValidationError: ``ca.expired`` when the two certificates' validities do not overlap.
    """
    not_before = max(subject_cert.not_valid_before_utc, issuer_cert.not_valid_before_utc)
    not_after = min(subject_cert.not_valid_after_utc, issuer_cert.not_valid_after_utc)
    if not_after <= max(not_before, now):
        raise ValidationError("ca.expired", "the two CA certificates are never valid together")
    issuer_ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    constraints = subject_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_cert.subject)
        .issuer_name(issuer_cert.subject)
        .public_key(subject_cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(constraints, critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(subject_cert.public_key()),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    )
    return issuer_signer.sign_certificate(builder)
