"""The pure PKI core: keys, CSRs, templates, the issuance pipeline and CA certificates.

Nothing here does I/O: callers pass in the clock, the signer and the authorisation
predicate, so every step can be tested alone.
"""

from __future__ import annotations

from fleetpki.pki.ca import CAUrls, build_root_ca, build_subordinate_ca, ca_name
from fleetpki.pki.csr import ParsedCSR, parse_csr
from fleetpki.pki.issuance import (
    IssuanceRequest,
    IssuedCertificate,
    Issuer,
    issue_certificate,
    thumbprints,
)
from fleetpki.pki.keys import CA_KEY_SPECS, KeySpec, generate_key, key_spec_of
from fleetpki.pki.names import SanType, SubjectAltName, validate_domain_name
from fleetpki.pki.profile import KeyUsageName, Template, parse_eku

__all__ = [
    "CA_KEY_SPECS",
    "CAUrls",
    "IssuanceRequest",
    "IssuedCertificate",
    "Issuer",
    "KeySpec",
    "KeyUsageName",
    "ParsedCSR",
    "SanType",
    "SubjectAltName",
    "Template",
    "build_root_ca",
    "build_subordinate_ca",
    "ca_name",
    "generate_key",
    "issue_certificate",
    "key_spec_of",
    "parse_csr",
    "parse_eku",
    "thumbprints",
    "validate_domain_name",
]
