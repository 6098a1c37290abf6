"""Shared pieces of the hub benchmarks: certificates, the two servers, and a raw MQTT load client.

fleetpki's hub runs in its own process (``python bench/hub_common.py serve ...``) so that
it and mosquitto are measured the same way: a separate server process, the same load
client in this process, on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetpki.hub.protocol import Connect, encode, encode_publish

__all__ = [
    "Certs",
    "connect_clients",
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


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Certs:
    """A CA, a server certificate for localhost and ``n`` EC P-256 device certificates."""

    folder: Path

    @property
    def ca(self) -> Path:
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
    """Write the CA, the server certificate and ``devices`` device certificates."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Bench CA"))
        .issuer_name(_name("Bench CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

    def leaf(cn: str, server: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(aki, critical=False)
        )
        if server:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256()), key

    folder.mkdir(parents=True, exist_ok=True)
    certs = Certs(folder)
    certs.ca.write_bytes(_pem(ca))
    server, server_key = leaf("localhost", True)
    certs.server_cert.write_bytes(_pem(server))
    certs.server_key.write_bytes(_key(server_key))
    for index in range(devices):
        cert, key = leaf(f"dev{index}", False)
        cert_path, key_path = certs.device(index)
        cert_path.write_bytes(_pem(cert) + _pem(ca))
        key_path.write_bytes(_key(key))
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
def fleetpki_hub(
    certs: Certs, devices: int, *, durable: Path | None = None
) -> Iterator[tuple[int, int]]:
    """Run fleetpki's hub (uvloop, in-memory registry) in a process; yield (port, pid)."""
    port = free_port()
    command = [sys.executable, __file__, "serve", str(certs.folder), str(port), str(devices)]
    if durable is not None:
        command.append(str(durable))
    process = subprocess.Popen(command)
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
    port: int, contexts: Sequence[ssl.SSLContext], indexes: Sequence[int], window: int = 0
) -> list[MQTTClient]:
    """Open and CONNECT one client per index, at most 50 handshakes at a time."""
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(50)

    async def one(index: int, context: ssl.SSLContext) -> MQTTClient:
        async with limit:
            _, client = await loop.create_connection(
                lambda: MQTTClient(index, window),
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


# --- the fleetpki hub process ----------------------------------------------------------------


def _serve(folder: Path, port: int, devices: int, durable: Path | None) -> None:
    import uvloop

    from fleetpki.hub.broker import Broker
    from fleetpki.hub.memory import InMemoryHubBackend
    from fleetpki.hub.server import HubServer
    from fleetpki.hub.tls import hub_ssl_context

    certs = Certs(folder)
    sink = None
    if durable is not None:
        db = sqlite3.connect(durable, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS telemetry (device TEXT, at TEXT, body BLOB, props TEXT)"
        )

        def sink(batch: Sequence[object]) -> None:
            # One transaction per batch, fsynced before the PUBACKs go out.
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO telemetry VALUES (?, ?, ?, ?)",
                [
                    (
                        r.device_id,
                        r.enqueued_at.isoformat(),
                        r.payload,
                        repr(r.application_properties),
                    )  # type: ignore[attr-defined]
                    for r in batch
                ],
            )
            db.execute("COMMIT")

    backend = InMemoryHubBackend(telemetry_sink=sink)
    backend.trust_ca(x509.load_pem_x509_certificate(certs.ca.read_bytes()))
    for index in range(devices):
        backend.add_device(f"dev{index}")
    context = hub_ssl_context(certs.server_cert, certs.server_key)

    async def main() -> None:
        server = HubServer(Broker(backend, hostnames=("localhost",)), context)
        await server.start("127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("devices", type=int)
    parser.add_argument("durable", type=Path, nargs="?")
    args = parser.parse_args()
    _serve(args.folder, args.port, args.devices, args.durable)


@contextmanager
def workdir() -> Iterator[Path]:
    """A temporary folder for one benchmark run."""
    with tempfile.TemporaryDirectory(prefix="fleetpki-bench-") as folder:
        # mosquitto started as root drops to the `mosquitto` user, which must read the certs.
        Path(folder).chmod(0o755)
        yield Path(folder)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    _main()
