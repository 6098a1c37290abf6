"""Helpers for the hub control-plane tests: device certificates from the local CA, foreign CAs."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetpki.application import FleetPKI
from fleetpki.hub.policy import DevicePolicy
from fleetpki.keystore import PrivateKey
from fleetpki.pki.keys import KeySpec, generate_key
from fleetpki.services import Actor
from fleetpki.services.ca_views import CAView, CertificateView
from fleetpki.services.certificates import IssueCommand
from fleetpki.services.foreign_revocation import Fetcher, RevocationChecker
from fleetpki.services.hub_authentication import DeviceAuthenticator

__all__ = ["ForeignCA", "authenticator", "issue_device_certificate", "issuing_ca"]


def authenticator(
    fleet: FleetPKI, *, soft_fail: bool = False, fetch: Fetcher | None = None
) -> DeviceAuthenticator:
    """The hub's device authenticator on ``fleet``'s database, built as the hub builds it."""
    return DeviceAuthenticator(
        fleet.store,
        policy=DevicePolicy(revocation_soft_fail=soft_fail),
        revocation=RevocationChecker(fetch),
        trust=fleet.hub_trust,
        seal=fleet.hub_authentication.seal,
    )


def issuing_ca(fleet: FleetPKI) -> CAView:
    """The local issuing CA."""
    return next(c for c in fleet.cas.list() if c.tier == "issuing")


def issue_device_certificate(
    fleet: FleetPKI, device_id: str, *, register: bool = True
) -> tuple[x509.Certificate, list[x509.Certificate], CertificateView]:
    """Issue a certificate with ``CN=device_id`` from the local issuing CA.

    With ``register`` the domain ``device_id`` is registered first (once), with the
    local admin as owner and requester. Returns the leaf, the chain a device would
    send (the issuing CA) and the stored certificate.
    """
    from conftest import make_csr

    admin = Actor.local_admin()
    ca = issuing_ca(fleet)
    _, csr = make_csr(device_id)
    if register and fleet.domains.find(ca.id, device_id) is None:
        fleet.domains.register(
            admin,
            ca_id=ca.id,
            template_id=None,
            name=device_id,
            owners=[admin.principal_id],
            requesters=[admin.principal_id],
        )
    issued = fleet.certificates.issue(admin, IssueCommand(ca_id=ca.id, csr=csr))
    return issued.issued.certificate, [ca.certificate], issued.certificate


class ForeignCA:
    """A CA outside fleetpki (made here), with its key, to sign device and proof certificates."""

    def __init__(self, name: str = "Foreign CA") -> None:
        self.key: PrivateKey = generate_key(KeySpec.EC_P256)
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())  # type: ignore[arg-type]
        )

    def sign(self, cn: str, *, client: bool = True) -> x509.Certificate:
        """A certificate with ``CN=cn`` signed by this CA (a device certificate by default)."""
        now = dt.datetime.now(dt.UTC)
        key = generate_key(KeySpec.EC_P256)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if client:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            ).add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        return builder.sign(self.key, hashes.SHA256())  # type: ignore[arg-type]
