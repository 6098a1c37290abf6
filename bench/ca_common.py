"""Shared pieces of the CA benchmarks (issuance, OCSP): a fleetpki home, servers, a load loop.

Both CA benchmarks measure fleetpki's API server (``fleetpki serve --only ca``, its own
process, HTTPS) against a peer server in its own process, with the same load generator:
``wrk`` (C, Debian's package), POSTing prepared distinct bodies in turn
(``bench/wrk_bodies.lua``), in timed rounds that alternate between the two servers, so
that a burst of load from other users of the machine hits both sides alike.  Figures
are the median round's rate, the medians of the rounds' p50 and p99 latency, and the CPU
time the server process and wrk used (from /proc and the child's rusage), so that a
reader sees whether the load generator was the limit.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetpki.api.background import free_port
from fleetpki.api.server import worker_count
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
    "write_bodies",
    "wrk_round",
]


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


#: ``fleetpki serve --workers`` for the CA benchmarks: what ``fleetpki serve`` runs by
#: default (one process per core, :func:`fleetpki.api.server.worker_count`) unless
#: ``FLEETPKI_BENCH_WORKERS`` says otherwise; the server's CPU is its workers' sum.
WORKERS = int(os.environ.get("FLEETPKI_BENCH_WORKERS", "0")) or worker_count()


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
    """What one server answered over all rounds of one kind of request."""

    rates: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    server_cpu: float = 0.0  # seconds of CPU the server process used in the timed parts
    client_cpu: float = 0.0  # the same for the load generator (wrk)
    elapsed: float = 0.0

    def row(self, name: str) -> str:
        """A table row: median round's rate, medians of the rounds' p50 and p99, CPU."""
        return (
            f"| {name} | {statistics.median(self.rates):,.0f} | "
            f"{statistics.median(self.p50_ms):.2f} | {statistics.median(self.p99_ms):.2f} | "
            f"{self.server_cpu / self.requests * 1000:.3f} | "
            f"{self.server_cpu / self.elapsed * 100:.0f} / "
            f"{self.client_cpu / self.elapsed * 100:.0f} | {self.errors} |"
        )


def ratio_row(name: str, ours: Load, peer: Load) -> str:
    """The table's last row: fleetpki's rate and CPU per request over the peer's."""
    rate = statistics.median(ours.rates) / statistics.median(peer.rates)
    cpu = (ours.server_cpu / ours.requests) / (peer.server_cpu / peer.requests)
    return f"| ratio fleetpki / {name} | {rate:.2f} | | | {cpu:.2f} | | |"


def header(first: str, unit: str) -> str:
    """The header of the table whose rows :meth:`Load.row` prints."""
    return (
        f"| {first} | {unit} (median round) | p50 ms | p99 ms | server CPU ms per request "
        "| CPU % server / load generator | errors |\n|---|---|---|---|---|---|---|"
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


def write_bodies(path: Path, bodies: Sequence[bytes]) -> Path:
    """Write request bodies for :func:`wrk_round`: each its length in decimal, a newline,
    then its bytes (wrk's Lua reads them with no decoding, which would cost it CPU)."""
    path.write_bytes(b"".join(b"%d\n%s" % (len(body), body) for body in bodies))
    return path


WRK_SCRIPT = Path(__file__).parent / "wrk_bodies.lua"


def wrk_round(
    load: Load,
    server_pid: int,
    url: str,
    bodies: Path,
    *,
    content_type: str,
    authorization: str | None = None,
    seconds: int,
    threads: int,
    connections: int,
) -> None:
    """One timed round of ``wrk`` POSTing the bodies in turn to ``url``; add it to load.

    wrk (C, one event loop per thread) keeps ``connections`` keep-alive connections
    open; a server that closes after each answer (openssl ocsp) is reconnected to,
    inside the timed part, as its real clients do. The server's CPU is read from /proc
    around the run, wrk's own from the rusage of the finished child.
    """
    env = dict(
        os.environ,
        WRK_BODIES=str(bodies),
        WRK_THREADS=str(threads),
        WRK_CONTENT_TYPE=content_type,
        WRK_AUTHORIZATION=authorization or "",
    )
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        url,
    ]
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_started = cpu_seconds(server_pid)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    server_cpu = cpu_seconds(server_pid) - server_started
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    elapsed = summary["duration_us"] / 1e6
    requests = int(summary["requests"])
    load.rates.append(requests / elapsed)
    load.p50_ms.append(summary["p50_us"] / 1000)
    load.p99_ms.append(summary["p99_us"] / 1000)
    load.requests += requests
    load.errors += sum(
        int(summary[key]) for key in ("connect_errors", "write_errors", "status_errors", "timeouts")
    )
    load.server_cpu += server_cpu
    load.client_cpu += (after_children.ru_utime + after_children.ru_stime) - (
        before_children.ru_utime + before_children.ru_stime
    )
    load.elapsed += elapsed
