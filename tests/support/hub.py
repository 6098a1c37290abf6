"""A running hub for tests: `start_hub` on uvloop in a thread, on a free port, over TLS.

The hub runs exactly as under ``fleetpki serve``: on the database-backed
`StoreHubBackend`, with the fleet's issuing CA trusted through the proof-of-possession
flow (``fleet.hub_trust.trust_local_ca``). Tests change the registry through the
application's control-plane services with `HubRegistry` (``hub.registry``): devices,
twins, cloud-to-device messages, hub CAs, and revocation through the real revocation
service.

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

from fleetpki.application import FleetPKI
from fleetpki.hub.backend import C2DMessage, TelemetryRecord, Twin
from fleetpki.hub.broker import Broker
from fleetpki.hub.server import HubServer, start_hub
from fleetpki.hub.store_backend import StoreHubBackend
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.certificates import IssueCommand
from fleetpki.services.hub_devices import DeviceSpec, DeviceStatus
from support.hub_control import issuing_ca

__all__ = [
    "DeviceFiles",
    "ForeignCA",
    "HubRegistry",
    "LiveHub",
    "issue_device",
    "start_hub_thread",
    "trust_issuing_ca",
]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class DeviceFiles:
    """A device's PEM files: ``cert`` holds the leaf and its issuing CA."""

    device_id: str
    cert: Path
    key: Path
    certificate: x509.Certificate


class HubRegistry:
    """The hub's control plane as tests drive it: each call is one service call, one commit.

    Every change goes through the application's services an operator's route ends in
    (``hub_devices``, ``hub_twins``, ``hub_messages``, ``hub_trust``,
    ``certificates.revoke``), so the live hub learns of it the way it does in
    production: from the notifications sent after the commit.
    """

    def __init__(self, fleet: FleetPKI, backend: StoreHubBackend) -> None:
        self.fleet = fleet
        self.backend = backend

    def add_device(self, device_id: str, *, enabled: bool = True) -> None:
        """Register a certificate-authority device."""
        status = DeviceStatus.ENABLED if enabled else DeviceStatus.DISABLED
        self.fleet.hub_devices.put(DeviceSpec(device_id, status=status))

    def set_enabled(self, device_id: str, enabled: bool) -> None:
        """Enable or disable a device."""
        status = DeviceStatus.ENABLED if enabled else DeviceStatus.DISABLED
        self.fleet.hub_devices.set_status(device_id, status)

    def delete_device(self, device_id: str) -> None:
        """Remove a device from the registry."""
        self.fleet.hub_devices.delete(device_id)

    def revoke(self, certificate: x509.Certificate) -> None:
        """Revoke a certificate of the fleet's CAs through the revocation service."""
        self.fleet.certificates.revoke(
            Actor.local_admin(),
            format(certificate.serial_number, "X"),
            RevocationReason.KEY_COMPROMISE,
        )

    def patch_desired(self, device_id: str, patch: dict[str, Any]) -> int:
        """Merge a desired-properties patch (as the service API's twin PATCH); the version."""
        twin = self.fleet.hub_twins.patch(device_id, {"properties": {"desired": patch}})
        return twin.desired_version

    def send_c2d(self, device_id: str, message: C2DMessage) -> None:
        """Queue a cloud-to-device message."""
        self.fleet.hub_messages.enqueue_c2d(
            device_id,
            message.payload,
            properties=message.properties,
            message_id=message.message_id,
        )

    def trust_ca(self, certificate: x509.Certificate, *, verified: bool = False) -> None:
        """Upload a CA certificate to the hub, unverified unless ``verified``."""
        name = f"ca-{certificate.serial_number:x}"[:40]
        self.fleet.hub_trust.upload(name, _pem(certificate), verified=verified)

    @property
    def telemetry(self) -> list[TelemetryRecord]:
        """The stored device-to-cloud messages, oldest first (read back from the database)."""
        return [
            TelemetryRecord(
                device_id=m.device_id,
                module_id=m.module_id,
                enqueued_at=m.enqueued_at,
                body=m.body,
                system_properties=dict(m.system_properties),
                properties=dict(m.properties),
            )
            for m in self.fleet.hub_messages.list_telemetry(limit=1000)
        ]

    def get_twin(self, device_id: str) -> Twin:
        """The device's twin as the hub reads it."""
        return self.backend.get_twin(device_id)

    def pending_c2d(self, device_id: str) -> list[C2DMessage]:
        """The device's undelivered cloud-to-device messages."""
        return list(self.backend.pending_c2d(device_id))


def trust_issuing_ca(fleet: FleetPKI) -> None:
    """Trust the fleet's issuing CA in its hub by proof of possession (idempotent)."""
    fleet.hub_trust.trust_local_ca(issuing_ca(fleet).id)


@dataclass
class LiveHub:
    """A hub running in a background thread, on the fleet's database."""

    server: HubServer
    backend: StoreHubBackend
    registry: HubRegistry
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
    admin = Actor.local_admin()
    issuing = issuing_ca(fleet)
    if fleet.domains.find(issuing.id, device_id) is None:
        fleet.domains.register(
            admin,
            ca_id=issuing.id,
            template_id=None,
            name=device_id,
            owners=[admin.principal_id],
            requesters=[admin.principal_id],
        )
    issued = fleet.certificates.issue(
        admin, IssueCommand(ca_id=issuing.id, csr=csr.public_bytes(serialization.Encoding.PEM))
    )
    certificate = issued.issued.certificate
    chain = issuing.certificate
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
    fleet: FleetPKI,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    revocation_poll: float = 0.5,
    trust: bool = True,
) -> Iterator[LiveHub]:
    """Serve the hub of ``fleet`` (``start_hub`` on `StoreHubBackend`) until the block ends.

    Args:
        trust: trust the issuing CA through the proof-of-possession flow first.
        revocation_poll: the outbox consumer's interval for other processes' revocations.
    """
    if trust:
        trust_issuing_ca(fleet)
    files = fleet.server_certificates.ensure(hostname="localhost", host=host)
    backend = StoreHubBackend(fleet, revocation_poll=revocation_poll)
    loop = uvloop.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []
    stoppers: list[Callable[[], Any]] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            stoppers.append(
                loop.run_until_complete(
                    start_hub(fleet, host=host, port=port, backend=backend, amqp_port=0)
                )
            )
        except BaseException as exc:
            failure.append(exc)
            started.set()
            loop.close()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(stoppers[0]())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=run, name="fleetpki-hub", daemon=True)
    thread.start()
    started.wait(30)
    if failure:
        thread.join()
        raise failure[0]
    server = stoppers[0].__self__
    assert isinstance(server, HubServer)
    try:
        yield LiveHub(server, backend, HubRegistry(fleet, backend), loop, files.ca_bundle)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)
