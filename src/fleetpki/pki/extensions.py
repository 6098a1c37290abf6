"""Certificate extensions that several profiles share (RFC 5280 §4.2)."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

__all__ = ["authority_information_access", "crl_distribution_points", "key_usage"]


def key_usage(
    *,
    digital_signature: bool = False,
    content_commitment: bool = False,
    key_encipherment: bool = False,
    data_encipherment: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    """A KeyUsage value (RFC 5280 §4.2.1.3) naming only the bits that are set."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=key_encipherment,
        data_encipherment=data_encipherment,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def crl_distribution_points(url: str) -> x509.CRLDistributionPoints:
    """One distribution point with a full-name URI (RFC 5280 §4.2.1.13)."""
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
        ]
    )


def authority_information_access(
    *, ocsp_url: str | None = None, ca_issuers_url: str | None = None
) -> x509.AuthorityInformationAccess | None:
    """AIA with the OCSP responder and the issuer's certificate (RFC 5280 §4.2.2.1).

    Returns ``None`` when neither URL is given, since an empty AIA is invalid.
    """
    access: list[x509.AccessDescription] = []
    if ocsp_url:
        access.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
            )
        )
    if ca_issuers_url:
        access.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS,
                x509.UniformResourceIdentifier(ca_issuers_url),
            )
        )
    return x509.AuthorityInformationAccess(access) if access else None
