"""The API server's own TLS certificate, issued by the local issuing CA and kept in the home."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetpki.errors import NotFoundError
from fleetpki.pki.extensions import (
    authority_information_access,
    crl_distribution_points,
    key_usage,
)
from fleetpki.pki.issuance import BACKDATE, thumbprints
from fleetpki.pki.keys import KeySpec
from fleetpki.services.app import FleetPKI
from fleetpki.services.audit import record_audit
from fleetpki.services.authority import ca_certificate, issuer_for, list_cas, list_templates
from fleetpki.services.context import LOCAL_ADMIN_ID, Actor
from fleetpki.store.models import CertificateRecord

__all__ = ["SERVER_CERT_DAYS", "ServerTLSFiles", "ensure_server_certificate", "server_names"]

#: Lifetime of the server certificate; it is reissued at start when a third remains.
SERVER_CERT_DAYS = 90


@dataclass(frozen=True, slots=True)
class ServerTLSFiles:
    """Where the server's TLS material lives.

    Attributes:
        certfile: the server certificate followed by the issuing CA (PEM).
        keyfile: its private key (PKCS#8 PEM, mode 0600).
        ca_bundle: the root CA certificate(s): what clients trust (PEM).
        client_ca_file: every CA certificate, to verify client certificates (PEM).
    """

    certfile: Path
    keyfile: Path
    ca_bundle: Path
    client_ca_file: Path

    @classmethod
    def in_home(cls, home: Path) -> ServerTLSFiles:
        """The files under ``home/tls``."""
        tls = home / "tls"
        return cls(
            tls / "server.pem", tls / "server-key.pem", tls / "ca-bundle.pem", tls / "client-ca.pem"
        )


def server_names(hostname: str, host: str) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses the server certificate must carry."""
    dns: list[str] = []
    ips: list[str] = ["127.0.0.1"]
    for candidate in (hostname, "localhost"):
        try:
            ips.append(str(ipaddress.ip_address(candidate)))
        except ValueError:
            dns.append(candidate.lower())
    try:
        address = ipaddress.ip_address(host)
        if not address.is_unspecified:
            ips.append(str(address))
    except ValueError:
        if host:
            dns.append(host.lower())
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


def _still_good(files: ServerTLSFiles, dns: list[str], ips: list[str], now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificates(files.certfile.read_bytes())[0]
        files.keyfile.stat()
    except (OSError, ValueError, IndexError):
        return False
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if cert.not_valid_after_utc - now < lifetime / 3:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return set(dns) <= have_dns and set(ips) <= have_ips


def _write(path: Path, data: bytes, mode: int) -> None:
    # Write a temporary file and rename it into place, so that a server starting at
    # the same time never reads a half-written certificate or key.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    temporary.chmod(mode)
    os.replace(temporary, path)


def _issue(
    app: FleetPKI, dns: list[str], ips: list[str], now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, list[x509.Certificate]]:
    with app.transaction() as session:
        issuing = [c for c in list_cas(session) if c.tier == "issuing" and c.status == "active"]
        if not issuing:
            raise NotFoundError(
                "ca.not_found", "no active issuing CA to sign the server certificate"
            )
        ca = issuing[-1]
        templates = list_templates(session, ca.id)
        if not templates:
            raise NotFoundError("template.not_found", f"CA {ca.name!r} has no template")
        issuer = issuer_for(ca, app.keystore, app.urls)
        chain = [ca_certificate(ca)]
        key = ec.generate_private_key(ec.SECP256R1())
        public_key = key.public_key()
        not_before = max(now - BACKDATE, issuer.certificate.not_valid_before_utc)
        not_after = min(
            now + dt.timedelta(days=SERVER_CERT_DAYS), issuer.certificate.not_valid_after_utc
        )
        general_names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        general_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
        issuer_ski = issuer.certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
            .issuer_name(issuer.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before.replace(microsecond=0))
            .not_valid_after(not_after.replace(microsecond=0))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
        )
        if issuer.crl_url:
            builder = builder.add_extension(crl_distribution_points(issuer.crl_url), critical=False)
        aia = authority_information_access(ocsp_url=issuer.ocsp_url)
        if aia is not None:
            builder = builder.add_extension(aia, critical=False)
        cert = issuer.signer.sign_certificate(builder)
        der = cert.public_bytes(serialization.Encoding.DER)
        sha1, sha256 = thumbprints(der)
        serial_hex = format(cert.serial_number, "X")
        # Recorded like every certificate the CA signs, so CRLs and OCSP know of it.
        session.add(
            CertificateRecord(
                ca_id=ca.id,
                template_id=templates[0].id,
                domain_id=None,
                serial_hex=serial_hex,
                subject_cn=dns[0],
                sans=[f"DNS:{d}" for d in dns] + [f"IP:{a}" for a in ips],
                key_spec=KeySpec.EC_P256.value,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                sha1_hex=sha1,
                sha256_hex=sha256,
                der=der,
                status="valid",
                requested_by=LOCAL_ADMIN_ID,
                renews_id=None,
                created_at=now,
            )
        )
        record_audit(
            session,
            Actor(principal_id=LOCAL_ADMIN_ID, is_admin=True, source="serve"),
            "certificate.issue",
            "certificate",
            serial_hex,
            at=now,
            details={"purpose": "api server TLS", "dns": dns, "ips": ips, "sha1": sha1},
        )
        chain += [ca_certificate(c) for c in list_cas(session) if c.tier == "root"]
    return cert, key, chain


def ensure_server_certificate(
    app: FleetPKI, *, hostname: str, host: str, now: dt.datetime | None = None
) -> ServerTLSFiles:
    """Make sure ``home/tls`` holds a current server certificate for the hostname.

    A certificate is reused while more than a third of its life remains and it
    names the hostname, ``localhost`` and 127.0.0.1 (and ``host`` when it is a
    specific address); otherwise a new key and certificate are issued by the
    active issuing CA.  The CA bundle (roots, for clients) and the client CA file
    (every CA, for verifying client certificates) are written each time.

    Raises:
        NotFoundError: ``ca.not_found`` when no issuing CA is active.
    """
    now = now or app.now()
    files = ServerTLSFiles.in_home(app.settings.home)
    dns, ips = server_names(hostname, host)
    if not _still_good(files, dns, ips, now):
        cert, key, chain = _issue(app, dns, ips, now)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write(files.keyfile, key_pem, 0o600)
        # The leaf and its issuing CA; the root is the trust anchor and is not sent.
        _write(
            files.certfile,
            b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, chain[0]]),
            0o644,
        )
    with app.transaction() as session:
        cas = list_cas(session)
        roots = [ca_certificate(c) for c in cas if c.tier == "root"]
        every = [ca_certificate(c) for c in cas]
    _write(
        files.ca_bundle, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in roots), 0o644
    )
    _write(
        files.client_ca_file,
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in every),
        0o644,
    )
    return files
