"""Certificate issuance: fleetpki's HTTPS API vs cfssl's sign API, in the same run.

Run: ``.venv/bin/python bench/ca_issuance.py`` (about 20 seconds; ``make bench`` installs
cfssl first).  Both CAs have EC P-256 keys and sign the same prepared EC P-256 CSRs:

- fleetpki: ``POST /v1/certificates`` over HTTPS (TLS 1.3, keep-alive) to ``fleetpki
  serve --only ca`` in its own process, authenticated by an API token; each
  issuance runs the whole pipeline and commits the certificate and its audit entry
  to SQLite before answering.
- cfssl 1.2.0: ``POST /api/v1/cfssl/sign`` over plain HTTP to ``cfssl serve`` in its own
  process; it signs and keeps nothing.

Each side gets the same number of requests from the same number of client threads.
A reference line gives the in-process costs: the pure pipeline, and the service with
its database write.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetpki.api.background import free_port
from fleetpki.pki import IssuanceRequest, Issuer, Template, issue_certificate, parse_csr
from fleetpki.services import Actor, FleetPKI, authority, certificates, domains, init_home
from fleetpki.services.certificates import IssueCommand
from fleetpki.services.principals import create_token
from fleetpki.settings import Settings

REQUESTS = 400
THREADS = 8


def _csrs(count: int) -> list[str]:
    key = ec.generate_private_key(ec.SECP256R1())
    out = []
    for index in range(count):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dev-{index}")])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        out.append(csr.public_bytes(serialization.Encoding.PEM).decode())
    return out


def _load(
    call: Callable[[httpx.Client, int], None], make_client: Callable[[], httpx.Client]
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(REQUESTS))

    def worker() -> None:
        with make_client() as client:
            call(client, -1)  # warm the connection (not counted)
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                started = time.perf_counter()
                call(client, index)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(worker) for _ in range(THREADS)]:
            future.result()
    return REQUESTS / (time.perf_counter() - started), latencies


def _fleetpki(folder: Path, csrs: list[str]) -> tuple[float, list[float]]:
    api_port = free_port()
    home = folder / "home"
    settings = Settings.default_for(home).with_changes(
        public_url=f"https://127.0.0.1:{api_port}", api_port=api_port, mqtt_port=free_port()
    )
    fleet = init_home(settings).app
    admin = Actor.local_admin()
    with fleet.transaction() as session:
        token = create_token(session, admin, admin.principal_id, now=fleet.now()).secret
        issuing = next(c for c in authority.list_cas(session) if c.tier == "issuing")
        for name in ["dev-warm", *(f"dev-{index}" for index in range(len(csrs)))]:
            domains.register_domain(
                session,
                admin,
                ca_id=issuing.id,
                template_id=None,
                name=name,
                owners=[admin.principal_id],
                requesters=[admin.principal_id],
                now=fleet.now(),
            )
    fleet.close()
    # The server runs in its own process, as cfssl does, so the load client's threads
    # do not share its interpreter.
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "fleetpki"),
            "--home",
            str(home),
            "serve",
            "--only",
            "ca",
            "--api-port",
            str(api_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        bundle = home / "tls" / "ca-bundle.pem"
        for _ in range(200):
            if bundle.exists():
                try:
                    context = ssl.create_default_context(cafile=str(bundle))
                    httpx.get(f"{settings.public_url}/healthz", verify=context, timeout=1)
                    break
                except (httpx.HTTPError, ssl.SSLError, OSError):
                    pass
            time.sleep(0.05)
        context = ssl.create_default_context(cafile=str(bundle))

        def call(client: httpx.Client, index: int) -> None:
            csr = csrs[index] if index >= 0 else _csr_for("dev-warm")
            answer = client.post("/v1/certificates", json={"csr": csr, "ca_id": issuing.id})
            answer.raise_for_status()

        return _load(
            call,
            lambda: httpx.Client(
                base_url=settings.public_url,
                verify=context,
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ),
        )
    finally:
        process.terminate()
        process.wait(15)


_WARM_KEY = ec.generate_private_key(ec.SECP256R1())


def _csr_for(cn: str) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    csr = (
        x509.CertificateSigningRequestBuilder().subject_name(name).sign(_WARM_KEY, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _cfssl(folder: Path, csrs: list[str]) -> tuple[float, list[float]]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cfssl bench CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "ca-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    (folder / "config.json").write_text(
        json.dumps(
            {
                "signing": {
                    "default": {
                        "expiry": "8760h",
                        "usages": ["digital signature", "server auth", "client auth"],
                    }
                }
            }
        )
    )
    port = free_port()
    process = subprocess.Popen(
        [
            "cfssl",
            "serve",
            "-address",
            "127.0.0.1",
            "-port",
            str(port),
            "-ca",
            str(folder / "ca.pem"),
            "-ca-key",
            str(folder / "ca-key.pem"),
            "-config",
            str(folder / "config.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(f"{base}/api/v1/cfssl/info", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)

        def call(client: httpx.Client, index: int) -> None:
            csr = csrs[index] if index >= 0 else _csr_for("dev-warm")
            answer = client.post("/api/v1/cfssl/sign", json={"certificate_request": csr})
            answer.raise_for_status()
            if not answer.json().get("success"):
                raise RuntimeError(answer.text)

        return _load(call, lambda: httpx.Client(base_url=base, timeout=30))
    finally:
        process.terminate()
        process.wait(10)


def _in_process(folder: Path, csrs: list[str]) -> tuple[float, float]:
    fleet: FleetPKI = init_home(Settings.default_for(folder / "inproc")).app
    admin = Actor.local_admin()
    try:
        with fleet.transaction() as session:
            ca = next(c for c in authority.list_cas(session) if c.tier == "issuing")
            issuer: Issuer = authority.issuer_for(ca, fleet.keystore, fleet.urls)
            for index in range(len(csrs)):
                domains.register_domain(
                    session,
                    admin,
                    ca_id=ca.id,
                    template_id=None,
                    name=f"dev-{index}",
                    owners=[admin.principal_id],
                    requesters=[admin.principal_id],
                    now=fleet.now(),
                )
        template = Template(str(uuid.uuid4()))
        parsed = [parse_csr(c) for c in csrs]
        started = time.perf_counter()
        for request in parsed:
            issue_certificate(
                IssuanceRequest(csr=request),
                template,
                issuer,
                may_request=lambda _n: True,
                now=fleet.now(),
            )
        pipeline = (time.perf_counter() - started) / len(parsed)
        started = time.perf_counter()
        for csr in csrs:
            with fleet.transaction() as session:
                certificates.issue(
                    session,
                    admin,
                    fleet.keystore,
                    fleet.urls,
                    IssueCommand(ca_id=ca.id, csr=csr),
                    now=fleet.now(),
                )
        service = (time.perf_counter() - started) / len(csrs)
        return pipeline, service
    finally:
        fleet.close()


def _row(name: str, rate: float, latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"| {name} | {rate:,.0f} | {statistics.median(ms):.1f} | {p99:.1f} |"


def main() -> int:
    if shutil.which("cfssl") is None:
        print("cfssl is missing: run `bash scripts/ensure-bench-deps.sh` (Debian's golang-cfssl)")
        return 1
    csrs = _csrs(REQUESTS)
    with tempfile.TemporaryDirectory(prefix="fleetpki-bench-") as scratch:
        folder = Path(scratch)
        pipeline, service = _in_process(folder, csrs[:200])
        fleet_rate, fleet_lat = _fleetpki(folder, csrs)
        cfssl_rate, cfssl_lat = _cfssl(folder, csrs)
    print(f"\ncertificate issuance, EC P-256 CA and CSRs, {REQUESTS} requests, {THREADS} threads")
    print("| server | issuances/s | p50 ms | p99 ms |\n|---|---|---|---|")
    print(_row("fleetpki /v1 over HTTPS, stored in SQLite", fleet_rate, fleet_lat))
    print(_row("cfssl 1.2.0 sign over HTTP, not stored", cfssl_rate, cfssl_lat))
    print(f"| ratio fleetpki / cfssl | {fleet_rate / cfssl_rate:.2f} | | |")
    print(
        f"\nin process, one core: pipeline {pipeline * 1e6:.0f} µs per certificate; "
        f"with the SQLite commit and audit entry {service * 1e6:.0f} µs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
