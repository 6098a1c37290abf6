"""A running hub for tests: `HubServer` on uvloop in a thread, on a free port, over TLS.

Device certificates come from the fleet's own issuing CA through the issuance pipeline
(`issue_device`), or from a throwaway foreign CA (`ForeignCA`) for the refusal cases.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetpki.hub.broker import Broker
from fleetpki.hub.memory import InMemoryHubBackend
from fleetpki.hub.server import HubServer
from fleetpki.hub.tls import hub_ssl_context
from fleetpki.services import Actor, FleetPKI
from fleetpki.services.authority import ca_certificate, list_cas
from fleetpki.services.certificates import IssueCommand, issue
from fleetpki.services.context import LOCAL_ADMIN_ID
from fleetpki.services.domains import find_domain, register_domain
from fleetpki.services.server_cert import ensure_server_certificate

__all__ = ["DeviceFiles", "ForeignCA", "LiveHub", "issue_device", "start_hub_thread"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class DeviceFiles:
    """A device's PEM files: ``cert`` holds the leaf and its issuing CA."""

    device_id: str
    cert: Path
    key: Path
    certificate: x509.Certificate


@dataclass
class LiveHub:
    """A hub running in a background thread."""

    server: HubServer
    backend: InMemoryHubBackend
    loop: asyncio.AbstractEventLoop
    ca_file: Path
    hostname: str = "localhost"

    @property
    def port(self) -> int:
        """The bound MQTT/TLS port."""
        return self.server.port

    @property
    def broker(self) -> Broker:
        """The broker."""
        return self.server.broker

    def call(self, function: Callable[[], _T]) -> _T:
        """Run ``function`` in the hub's loop and return its result."""
        done: asyncio.Future[Any] = asyncio.run_coroutine_threadsafe(_call(function), self.loop)  # type: ignore[arg-type]
        return done.result(30)  # type: ignore[no-any-return]

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        """Run a coroutine in the hub's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


async def _call(function: Callable[[], _T]) -> _T:
    return function()


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_device(fleet: FleetPKI, device_id: str, folder: Path) -> DeviceFiles:
    """Issue a device certificate (CN = ``device_id``, EC P-256) from the fleet's issuing CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    with fleet.transaction() as session:
        issuing = next(c for c in list_cas(session) if c.tier == "issuing")
        if find_domain(session, issuing.id, device_id) is None:
            register_domain(
                session,
                Actor.local_admin(),
                ca_id=issuing.id,
                template_id=None,
                name=device_id,
                owners=[LOCAL_ADMIN_ID],
                requesters=[LOCAL_ADMIN_ID],
                now=fleet.now(),
            )
        _, issued = issue(
            session,
            Actor.local_admin(),
            fleet.keystore,
            fleet.urls,
            IssueCommand(ca_id=issuing.id, csr=csr.public_bytes(serialization.Encoding.PEM)),
            now=fleet.now(),
        )
        chain = ca_certificate(issuing)
    certificate = x509.load_der_x509_certificate(issued.der)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path = folder / f"{device_id}.pem"
    key_path = folder / f"{device_id}.key"
    cert_path.write_bytes(_pem(certificate, chain))
    key_path.write_bytes(_key_pem(key))
    return DeviceFiles(device_id, cert_path, key_path, certificate)


class ForeignCA:
    """A CA the hub does not know (or knows but has not verified), made with cryptography."""

    def __init__(self, name: str = "Foreign CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self.key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, device_id: str, folder: Path) -> DeviceFiles:
        """A client certificate for ``device_id`` signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        folder.mkdir(parents=True, exist_ok=True)
        cert_path = folder / f"{device_id}.foreign.pem"
        key_path = folder / f"{device_id}.foreign.key"
        cert_path.write_bytes(_pem(certificate, self.certificate))
        key_path.write_bytes(_key_pem(key))
        return DeviceFiles(device_id, cert_path, key_path, certificate)


@contextmanager
def start_hub_thread(
    fleet: FleetPKI, *, host: str = "127.0.0.1", port: int = 0, batch_window: float = 0.002
) -> Iterator[LiveHub]:
    """Serve a hub for ``fleet`` (an in-memory registry trusting its CAs) until the block ends."""
    files = ensure_server_certificate(fleet, hostname="localhost", host=host)
    context = hub_ssl_context(files.certfile, files.keyfile)
    backend = InMemoryHubBackend()
    with fleet.transaction() as session:
        for ca in list_cas(session):
            backend.trust_ca(ca_certificate(ca))
    broker = Broker(backend, hostnames=("localhost", "127.0.0.1"), batch_window=batch_window)
    server = HubServer(broker, context)
    loop = uvloop.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start(host, port))
        except BaseException as exc:
            failure.append(exc)
            started.set()
            loop.close()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(server.stop())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=run, name="fleetpki-hub", daemon=True)
    thread.start()
    started.wait(30)
    if failure:
        thread.join()
        raise failure[0]
    try:
        yield LiveHub(server, backend, loop, files.ca_bundle)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)
