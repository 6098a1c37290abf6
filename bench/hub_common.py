"""Shared pieces of the hub benchmarks: a fleetpki home, the two servers, a raw MQTT load client.

fleetpki's hub is the one users run: ``fleetpki serve --only hub`` on a real fleetpki
home (SQLite), the database-backed hub whose devices are registered in its registry and
whose certificates come from its own issuing CA, trusted in the hub by proof of
possession. It runs in its own process so that it and mosquitto are measured the same
way: a separate server process, the same load client in this process, on the same
machine in the same run. mosquitto gets the same CA, server certificate and devices.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetpki.hub.protocol import Connect, encode, encode_publish

__all__ = [
    "Certs",
    "connect_clients",
    "cpu_seconds",
    "fleetpki_hub",
    "free_port",
    "make_certs",
    "mosquitto",
    "rss_kb",
    "table",
]

_DISCONNECT = b"\xe0\x00"


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Certs:
    """A fleetpki home with ``n`` registered devices, and the PEM files both servers use."""

    folder: Path

    @property
    def home(self) -> Path:
        return self.folder / "home"

    @property
    def ca(self) -> Path:
        """The CA certificates (root and issuing), to verify the server and the devices."""
        return self.folder / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def device(self, index: int) -> tuple[Path, Path]:
        return self.folder / f"dev{index}.pem", self.folder / f"dev{index}.key"


def make_certs(folder: Path, devices: int) -> Certs:
    """Make a fleetpki home: its hub trusts its issuing CA, ``devices`` devices registered.

    Each device ``dev{i}`` gets an EC P-256 key and a certificate issued by the home's
    issuing CA through the issuance service, and is registered in the hub registry
    (certificateAuthority). The server certificate is the one ``fleetpki serve`` uses;
    copies readable by mosquitto's user go into ``folder``.
    """
    from fleetpki.application import init_home
    from fleetpki.services import Actor
    from fleetpki.services.certificates import IssueCommand
    from fleetpki.services.hub_devices import DeviceSpec
    from fleetpki.settings import Settings

    certs = Certs(folder)
    settings = Settings.default_for(certs.home).with_changes(
        host="127.0.0.1", key_passphrase_file=str(folder / "key-passphrase")
    )
    fleet = init_home(settings).app
    try:
        admin = Actor.local_admin()
        issuing = fleet.cas.current_issuer()
        fleet.hub_trust.trust_local_ca(issuing.id)
        issuing_pem = _pem(issuing.certificate)
        files = fleet.server_certificates.ensure(hostname="localhost", host="127.0.0.1")
        certs.ca.write_bytes(files.client_ca_file.read_bytes())
        certs.server_cert.write_bytes(files.certfile.read_bytes())
        certs.server_key.write_bytes(files.keyfile.read_bytes())
        certs.server_key.chmod(0o644)  # mosquitto reads it as its own user
        for index in range(devices):
            device_id = f"dev{index}"
            fleet.domains.register(
                admin,
                ca_id=issuing.id,
                template_id=None,
                name=device_id,
                owners=[admin.principal_id],
                requesters=[admin.principal_id],
            )
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
                .sign(key, hashes.SHA256())
            )
            issued = fleet.certificates.issue(
                admin,
                IssueCommand(ca_id=issuing.id, csr=csr.public_bytes(serialization.Encoding.PEM)),
            )
            fleet.hub_devices.put(DeviceSpec(device_id))
            cert_path, key_path = certs.device(index)
            cert_path.write_bytes(_pem(issued.issued.certificate) + issuing_pem)
            key_path.write_bytes(_key(key))
    finally:
        fleet.close()
    return certs


def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


@contextmanager
def mosquitto(certs: Certs) -> Iterator[tuple[int, int]]:
    """Run mosquitto with mutual TLS on a free port; yield (port, pid)."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    config = certs.folder / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\n"
        f"cafile {certs.ca}\ncertfile {certs.server_cert}\nkeyfile {certs.server_key}\n"
        "require_certificate true\nuse_identity_as_username true\n"
        "persistence false\nmax_queued_messages 0\nlog_dest none\n"
    )
    process = subprocess.Popen([exe, "-c", str(config)], stdout=subprocess.DEVNULL)
    try:
        _wait_port(port, process)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def fleetpki_hub(certs: Certs) -> Iterator[tuple[int, int]]:
    """Run ``fleetpki serve --only hub`` on the home of ``certs``; yield (port, pid)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "fleetpki",
        "--home",
        str(certs.home),
        "serve",
        "--only",
        "hub",
        "--host",
        "127.0.0.1",
        "--mqtt-port",
        str(port),
        "--amqp-port",
        "-1",
    ]
    with (certs.folder / "serve.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)
        try:
            _wait_port(port, process)
            yield port, process.pid
        finally:
            process.terminate()
            process.wait(10)


def rss_kb(pid: int) -> int:
    """The resident set size of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def rss_parts_kb(pid: int) -> dict[str, int]:
    """The resident set of a process by kind, in KiB: ``RssAnon`` (its heap, mappings
    and Python objects) and ``RssFile`` (pages of mapped files: code, and the database
    file SQLite reads through its memory map)."""
    parts = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            parts[key] = int(value.split()[0])
    return parts


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) a process has used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_context(certs: Certs, index: int) -> ssl.SSLContext:
    """A client TLS context with device ``index``'s certificate."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    cert, key = certs.device(index)
    context.load_cert_chain(cert, key)
    return context


def connect_packet(index: int, keepalive: int = 600) -> bytes:
    """A CONNECT for device ``index`` with an Azure-style username."""
    client_id = f"dev{index}"
    username = f"localhost/{client_id}/?api-version=2019-10-01"
    return encode(Connect(client_id, False, keepalive, username))


class MQTTClient(asyncio.Protocol):
    """A minimal load client: CONNECT, then QoS 1 PUBLISHes with a window, counting PUBACKs."""

    def __init__(self, index: int, window: int = 0) -> None:
        self.index = index
        self.window = window
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.received = 0
        self.acked = 0
        self.sending = False
        self.next_id = 1
        self.topic = f"devices/dev{self.index}/messages/events/"
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(connect_packet(self.index))  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if not self.connected.done() and self.received >= 4:
            if data[3] != 0:
                self.connected.set_exception(RuntimeError(f"CONNACK {data[3]}"))
                return
            self.connected.set_result(None)
        # After the 4-byte CONNACK, every packet from the server is a 4-byte PUBACK.
        acked = (self.received - 4) // 4
        new, self.acked = acked - self.acked, acked
        if self.sending and new:
            self._send(new)

    def start_sending(self) -> None:
        self.sending = True
        self._send(self.window)

    def _send(self, count: int) -> None:
        chunks = []
        for _ in range(count):
            chunks.append(encode_publish(self.topic, b"x" * 64, 1, False, False, self.next_id))
            self.next_id = self.next_id % 65535 + 1
        assert self.transport is not None
        self.transport.write(b"".join(chunks))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError("closed before CONNACK"))
        if not self.closed.done():
            self.closed.set_result(None)

    def disconnect(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_DISCONNECT)
            self.transport.close()


async def connect_clients(
    port: int,
    contexts: Sequence[ssl.SSLContext],
    indexes: Sequence[int],
    window: int = 0,
    factory: Callable[[int], MQTTClient] | None = None,
) -> list[MQTTClient]:
    """Open and CONNECT one client per index, at most 50 handshakes at a time.

    ``factory`` makes the client of an index (``MQTTClient(index, window)`` by default).
    """
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(50)
    make = factory or (lambda index: MQTTClient(index, window))

    async def one(index: int, context: ssl.SSLContext) -> MQTTClient:
        async with limit:
            _, client = await loop.create_connection(
                lambda: make(index),
                "127.0.0.1",
                port,
                ssl=context,
                server_hostname="localhost",
            )
            await client.connected
            return client

    return list(await asyncio.gather(*(one(i, c) for i, c in zip(indexes, contexts, strict=True))))


def table(title: str, unit: str, fleet: float, mosq: float, higher_is_better: bool = True) -> str:
    """A small table: both figures and fleetpki's ratio to mosquitto."""
    ratio = fleet / mosq if mosq else float("nan")
    better = "higher" if higher_is_better else "lower"
    return (
        f"\n{title} ({better} is better)\n"
        f"| server    | {unit:>14} |\n|-----------|{'-' * 16}|\n"
        f"| fleetpki  | {fleet:14.1f} |\n| mosquitto | {mosq:14.1f} |\n"
        f"| ratio fleetpki/mosquitto | {ratio:.2f} |\n"
    )


@contextmanager
def workdir() -> Iterator[Path]:
    """A temporary folder for one benchmark run."""
    with tempfile.TemporaryDirectory(prefix="fleetpki-bench-") as folder:
        # mosquitto started as root drops to the `mosquitto` user, which must read the certs.
        Path(folder).chmod(0o755)
        yield Path(folder)
