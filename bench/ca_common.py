"""Shared pieces of the CA benchmarks (issuance, OCSP): a fleetpki home, servers, a load loop.

Both CA benchmarks measure fleetpki's API server (``fleetpki serve --only ca``, its own
process, HTTPS) against a peer server in its own process, with the same load client in
this process: ``clients`` threads, each with one keep-alive ``httpx.Client``, sending a
fixed list of requests in rounds that alternate between the two servers, so that a burst
of load from other users of the machine hits both sides alike.  Figures are the median
round's rate, the p50/p99 latency over every request of every round, and the CPU time
the server process and the load client used (from /proc and ``time.process_time``): on
a small machine the Python client can be the limit, and CPU per request is then the
fairer comparison of the servers.
"""

from __future__ import annotations

import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetpki.api.background import free_port
from fleetpki.application import FleetPKI, init_home
from fleetpki.keystore import find_passphrase
from fleetpki.services import Actor
from fleetpki.settings import Settings

__all__ = [
    "WORKERS",
    "FleetHome",
    "Load",
    "cpu_seconds",
    "csr_pem",
    "export_ca",
    "fleetpki_server",
    "header",
    "make_home",
    "process",
    "ratio_row",
    "run_round",
]

T = TypeVar("T")


def csr_pem(common_name: str) -> str:
    """A PEM CSR for ``CN=common_name`` with a new EC P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class FleetHome:
    """A fresh fleetpki home (SQLite, EC P-256 root and issuing CA) for one run."""

    home: Path
    settings: Settings
    fleet: FleetPKI
    ca_id: str
    key_ref: str
    ca_certificate: x509.Certificate
    admin: Actor

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.settings.api_port}"

    @property
    def bundle(self) -> Path:
        """The CA bundle that verifies the API's server certificate (written by serve)."""
        return self.home / "tls" / "ca-bundle.pem"

    def register(self, names: Sequence[str]) -> None:
        """Register each name as a domain on the issuing CA, the admin its requester."""
        for name in names:
            self.fleet.domains.register(
                self.admin,
                ca_id=self.ca_id,
                template_id=None,
                name=name,
                owners=[self.admin.principal_id],
                requesters=[self.admin.principal_id],
            )


def make_home(folder: Path) -> FleetHome:
    """Initialise a home in ``folder / "home"`` whose API listens on a free loopback port."""
    api_port = free_port()
    home = folder / "home"
    settings = Settings.default_for(home).with_changes(
        public_url=f"https://127.0.0.1:{api_port}",
        api_port=api_port,
        mqtt_port=free_port(),
        key_passphrase_file=str(folder / "key-passphrase"),
    )
    fleet = init_home(settings).app
    issuing = fleet.cas.current_issuer()
    certificate = issuing.certificate
    key_ref = _key_ref_of(fleet, certificate)
    return FleetHome(home, settings, fleet, issuing.id, key_ref, certificate, Actor.local_admin())


def _key_ref_of(fleet: FleetPKI, certificate: x509.Certificate) -> str:
    """The keystore reference of the CA key whose public key is ``certificate``'s.

    No service hands out a CA's key reference (adapters have no business with keys), so
    the benchmark finds the issuing CA's key among the home's key files by its public
    key; the peer servers need that key, and the in-process reference line its signer.
    """
    public = certificate.public_key()
    for path in sorted(fleet.settings.keys_dir.glob("*.pem")):
        key_ref = f"file:{path.name}"
        if fleet.keystore.signer(key_ref).public_key() == public:
            return key_ref
    raise RuntimeError(f"no key in {fleet.settings.keys_dir} matches {certificate.subject}")


def export_ca(fleet_home: FleetHome, folder: Path) -> tuple[Path, Path]:
    """Write the issuing CA's certificate and its key *unencrypted* (SEC 1 PEM) into folder.

    For the peer servers only, which need the key in the clear; the folder is a
    temporary directory removed at the end of the run.
    """
    key_file = fleet_home.home / "keys" / fleet_home.key_ref.removeprefix("file:")
    key = serialization.load_pem_private_key(
        key_file.read_bytes(),
        password=find_passphrase(fleet_home.home, fleet_home.settings.key_passphrase_file).secret,
    )
    cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
    cert_path.write_bytes(fleet_home.ca_certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@contextmanager
def process(
    command: Sequence[str], ready: Callable[[], object]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process until the block ends; wait until ``ready()`` stops raising.

    Its output goes to a temporary file (a pipe nobody reads would fill and block a
    server that logs every request, as cfssl does); it is shown if the server fails.
    """
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                if server.poll() is not None:
                    log.seek(0)
                    output = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"{command[0]} exited with {server.returncode}: {output}")
                try:
                    ready()
                    break
                except (httpx.HTTPError, OSError) as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{command[0]} did not start") from exc
                    time.sleep(0.05)
            yield server
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)


#: ``fleetpki serve --workers`` for the CA benchmarks: one process unless
#: ``FLEETPKI_BENCH_WORKERS`` says otherwise (the server's CPU is then its workers' sum).
WORKERS = int(os.environ.get("FLEETPKI_BENCH_WORKERS", "1"))


@contextmanager
def fleetpki_server(fleet_home: FleetHome) -> Iterator[subprocess.Popen[bytes]]:
    """``fleetpki serve --only ca --workers WORKERS`` on the home's API port."""
    fleet_home.fleet.close()  # the server owns the database from here on
    command = [
        str(Path(sys.executable).parent / "fleetpki"),
        "--home",
        str(fleet_home.home),
        "serve",
        "--only",
        "ca",
        "--api-port",
        str(fleet_home.settings.api_port),
        "--workers",
        str(WORKERS),
    ]

    def ready() -> None:
        if not fleet_home.bundle.exists():
            raise OSError("no server certificate yet")
        httpx.get(
            f"{fleet_home.base_url}/healthz", verify=str(fleet_home.bundle), timeout=1
        ).raise_for_status()

    with process(command, ready) as server:
        yield server


@dataclass
class Load:
    """What one server answered over all rounds."""

    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    server_cpu: float = 0.0  # seconds of CPU the server process used in the timed parts
    client_cpu: float = 0.0  # the same for this process (the load client)
    elapsed: float = 0.0

    def row(self, name: str) -> str:
        ms = sorted(x * 1000 for x in self.latencies)
        p99 = ms[min(len(ms) - 1, round(len(ms) * 0.99))]
        count = len(self.latencies)
        return (
            f"| {name} | {statistics.median(self.rates):,.0f} | "
            f"{statistics.median(ms):.2f} | {p99:.2f} | "
            f"{self.server_cpu / count * 1000:.2f} | "
            f"{self.server_cpu / self.elapsed * 100:.0f} / "
            f"{self.client_cpu / self.elapsed * 100:.0f} |"
        )


def ratio_row(name: str, ours: Load, peer: Load) -> str:
    """The table's last row: fleetpki's rate and CPU per request over the peer's."""
    rate = statistics.median(ours.rates) / statistics.median(peer.rates)
    cpu = (ours.server_cpu / len(ours.latencies)) / (peer.server_cpu / len(peer.latencies))
    return f"| ratio fleetpki / {name} | {rate:.2f} | | | {cpu:.1f} | |"


def header(first: str, unit: str) -> str:
    """The header of the table whose rows :meth:`Load.row` prints."""
    return (
        f"| {first} | {unit} (median round) | p50 ms | p99 ms | server CPU ms per request "
        "| CPU % server / load client |\n|---|---|---|---|---|---|"
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` (all its threads) and of its running
    children (the workers of ``fleetpki serve --workers``), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own + sum(cpu_seconds(int(child)) for child in children)


def run_round(
    load: Load,
    server_pid: int,
    warm: T,
    items: Sequence[T],
    send: Callable[[httpx.Client, T], None],
    make_client: Callable[[], httpx.Client],
    clients: int,
) -> None:
    """Send every item once from ``clients`` threads; add the rate and latencies to load.

    Each thread opens its client and sends ``warm`` once (not counted) so that
    connection set-up is outside the timed part; clients that the server closes after
    each answer (openssl ocsp) reconnect inside it, as their real clients do.
    """
    lock = threading.Lock()
    pending = iter(items)
    ready = threading.Barrier(clients + 1)
    latencies: list[float] = []

    def worker() -> None:
        with make_client() as client:
            send(client, warm)
            ready.wait()
            while True:
                with lock:
                    item = next(pending, None)
                if item is None:
                    return
                started = time.perf_counter()
                send(client, item)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(worker) for _ in range(clients)]
        ready.wait()
        server_started, client_started = cpu_seconds(server_pid), time.process_time()
        started = time.perf_counter()
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - started
        load.server_cpu += cpu_seconds(server_pid) - server_started
        load.client_cpu += time.process_time() - client_started
    load.elapsed += elapsed
    load.rates.append(len(items) / elapsed)
    load.latencies.extend(latencies)
