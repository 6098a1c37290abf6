"""The API server's own TLS certificate, issued by the current issuing CA and kept in the home.

It is issued like every other certificate: a CSR through the one issuance pipeline
(:func:`fleetpki.services.certificates.sign_and_store`) under a server profile, by the
CA :func:`fleetpki.services.authority.current_issuer` names, and recorded, so that CRLs
and OCSP know of it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetpki.keystore import KeyStore
from fleetpki.pki.csr import parse_csr
from fleetpki.pki.issuance import IssuanceRequest
from fleetpki.pki.keys import KeySpec
from fleetpki.pki.names import SanType, SubjectAltName
from fleetpki.pki.profile import EKU_NAMES, Template
from fleetpki.services.audit import write_audit
from fleetpki.services.authority import (
    CAUrlsConfig,
    ca_certificate,
    ca_chain_of,
    current_issuer,
    template_for,
)
from fleetpki.services.certificates import sign_and_store
from fleetpki.services.context import LOCAL_ADMIN_ID, Actor, Clock
from fleetpki.services.ports import Store
from fleetpki.services.signing_contexts import TemplateChoice, signing_context

if TYPE_CHECKING:
    pass

__all__ = [
    "SERVER_CERT_DAYS",
    "SERVER_COMMON_NAME",
    "ServerCertificateService",
    "ServerTLSFiles",
    "server_names",
    "server_profile",
]

#: Lifetime of the server certificate; it is reissued at start when a third remains.
SERVER_CERT_DAYS = 90
#: The subject CN of server certificates. The names clients check are the SANs
#: (RFC 6125 §6.4.4); a single-label CN such as ``localhost`` would be folded out of
#: the SANs by the pipeline, which treats a non-DNS CN as a device id.
SERVER_COMMON_NAME = "fleetpki server"


def server_profile(template_id: str) -> Template:
    """The issuance profile of server certificates: P-256, serverAuth, 90 days.

    ``template_id`` is the stored template the certificate is recorded under (the
    issuing CA's first): the profile is code, so it never appears in EZCA's catalogue.
    """
    return Template(
        template_id=template_id,
        name="fleetpki server",
        max_validity_days=SERVER_CERT_DAYS,
        allowed_key_specs=frozenset({KeySpec.EC_P256}),
        default_ekus=(EKU_NAMES["serverAuth"],),
        allowed_ekus=frozenset({EKU_NAMES["serverAuth"]}),
        local_names=frozenset({"localhost"}),
    )


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


def _served(files: ServerTLSFiles) -> list[x509.Certificate]:
    """The certificates in the certfile (leaf first), or none when it is missing or bad."""
    try:
        certificates = x509.load_pem_x509_certificates(files.certfile.read_bytes())
        files.keyfile.stat()
    except (OSError, ValueError):
        return []
    return certificates


def _still_good(
    served: list[x509.Certificate],
    dns: list[str],
    ips: list[str],
    now: dt.datetime,
    issuer: x509.Certificate,
) -> bool:
    if len(served) < 2 or served[1] != issuer:
        # Issued by a CA generation that is no longer the one issuing: after a CA
        # renewal the server moves onto the new generation, so the old one can drain.
        return False
    cert = served[0]
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


def _server_csr(key: ec.EllipticCurvePrivateKey, dns: list[str], ips: list[str]) -> bytes:
    general_names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    general_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_COMMON_NAME)]))
        .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True, slots=True)
class _Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    issuing: x509.Certificate


class ServerCertificateService:
    """The server's own TLS material in ``home/tls``.

    Args:
        store: the database.
        keystore: custody of CA keys.
        clock: the source of "now".
        urls: where CRLs, OCSP and CA certificates are published.
        home: the fleetpki home (its ``tls`` folder holds the files).
    """

    def __init__(
        self, store: Store, keystore: KeyStore, clock: Clock, urls: CAUrlsConfig, home: Path
    ) -> None:
        self._store = store
        self._keystore = keystore
        self._clock = clock
        self._urls = urls
        self._home = home

    def _issue(
        self, dns: list[str], ips: list[str], now: dt.datetime, replaces: x509.Certificate | None
    ) -> _Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = _server_csr(key, dns, ips)
        names = {SERVER_COMMON_NAME, *dns, *ips}
        with self._store.transaction() as tx:
            ca = current_issuer(tx, now)
            stored_template = template_for(tx, ca, None)
            sans = tuple(SubjectAltName(SanType.DNS, d) for d in dns) + tuple(
                SubjectAltName(SanType.IP, a) for a in ips
            )
            # The certificate this one replaces is recorded as renewed by it, so the CA
            # generation that signed it is not held back from retiring by it.
            previous = (
                tx.certificates.find_by_serial(format(replaces.serial_number, "X"))
                if replaces is not None
                else None
            )
            if previous is not None and tx.certificates.successor_of(previous.id) is not None:
                previous = None
            record, issued = sign_and_store(
                tx,
                IssuanceRequest(
                    csr=parse_csr(csr), validity_days=SERVER_CERT_DAYS, subject_alt_names=sans
                ),
                TemplateChoice(stored_template.id, server_profile(stored_template.id)),
                signing_context(tx, ca, self._keystore, self._urls),
                may_request=lambda name: name in names,
                requested_by=LOCAL_ADMIN_ID,
                renews_id=previous.id if previous is not None else None,
                now=now,
            )
            write_audit(
                tx,
                Actor(principal_id=LOCAL_ADMIN_ID, is_admin=True, source="serve"),
                "certificate.issue",
                "certificate",
                record.serial_hex,
                at=now,
                details={
                    "purpose": "api server TLS",
                    "dns": dns,
                    "ips": ips,
                    "sha1": issued.sha1_hex,
                },
            )
            return _Issued(issued.certificate, key, ca_chain_of(tx, ca)[0])

    def _current_issuer_certificate(self, now: dt.datetime) -> x509.Certificate:
        with self._store.transaction() as tx:
            return ca_chain_of(tx, current_issuer(tx, now))[0]

    def _anchors(self) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
        with self._store.transaction() as tx:
            cas = tx.cas.all()
            return (
                [ca_certificate(c) for c in cas if c.tier == "root"],
                [ca_certificate(c) for c in cas],
            )

    def files(self) -> ServerTLSFiles:
        """Where the server's TLS files are, as they are now (nothing is issued)."""
        return ServerTLSFiles.in_home(self._home)

    def ensure(self, *, hostname: str, host: str) -> ServerTLSFiles:
        """Make sure ``home/tls`` holds a current server certificate for the hostname.

        A certificate is reused while more than a third of its life remains and it
        names the hostname, ``localhost`` and 127.0.0.1 (and ``host`` when it is a
        specific address); otherwise a new key and certificate are issued by the
        current issuing CA. The CA bundle (roots, for clients) and the client CA file
        (every CA, for verifying client certificates) are written each time. Files
        are written after the unit of work, never inside it.

        Raises:
            NotFoundError: ``ca.no_current_issuer`` when no issuing CA may issue now.
        """
        return self.refresh(hostname=hostname, host=host)[0]

    def refresh(self, *, hostname: str, host: str) -> tuple[ServerTLSFiles, bool]:
        """As :meth:`ensure`, and say whether a new certificate was issued.

        A running server calls this periodically and, on ``True``, loads the new
        certificate into its live TLS contexts: the certificate then follows a renewed
        issuing CA (and its own expiry) without a restart. The certificate replaced is
        recorded as renewed by the new one.
        """
        now = self._clock()
        files = ServerTLSFiles.in_home(self._home)
        dns, ips = server_names(hostname, host)
        served = _served(files)
        renewed = not _still_good(served, dns, ips, now, self._current_issuer_certificate(now))
        if renewed:
            issued = self._issue(dns, ips, now, served[0] if served else None)
            key_pem = issued.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write(files.keyfile, key_pem, 0o600)
            # The leaf and its issuing CA; the root is the trust anchor and is not sent.
            _write(
                files.certfile,
                b"".join(
                    c.public_bytes(serialization.Encoding.PEM)
                    for c in (issued.certificate, issued.issuing)
                ),
                0o644,
            )
        roots, every = self._anchors()
        _write(
            files.ca_bundle,
            b"".join(c.public_bytes(serialization.Encoding.PEM) for c in roots),
            0o644,
        )
        _write(
            files.client_ca_file,
            b"".join(c.public_bytes(serialization.Encoding.PEM) for c in every),
            0o644,
        )
        return files, renewed
