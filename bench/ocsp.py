"""OCSP responses: fleetpki's responder vs ``openssl ocsp`` as a responder, in the same run.

Run: ``.venv/bin/python bench/ocsp.py`` (about 15 seconds).  Both answer for the same
EC P-256 issuing CA (fleetpki's, whose key the benchmark reads from the home with its
passphrase) and the same prepared requests, half for a good and half for a revoked
certificate, each with a fresh nonce:

- fleetpki: ``POST /ocsp`` over HTTPS to ``fleetpki serve --only ca`` in its own process;
  each answer looks the serial up in the database and is signed by the CA key.
- openssl 3: ``openssl ocsp -port`` over plain HTTP with an ``index.txt`` in ``openssl
  ca`` format, signing with the same key; it answers one request at a time.

Each side gets the same requests from the same number of client threads, on new
connections for openssl (it closes after each answer) and keep-alive for fleetpki.
"""

from __future__ import annotations

import concurrent.futures
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from fleetpki.api.background import free_port
from fleetpki.keystore import load_or_create_passphrase
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor, authority, certificates, domains, init_home
from fleetpki.services.certificates import IssueCommand
from fleetpki.settings import Settings

REQUESTS = 400
THREADS = 4
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from conftest import make_csr  # noqa: E402 - the tests' CSR helper


def _requests(leaves: list[x509.Certificate], issuer: x509.Certificate) -> list[bytes]:
    out = []
    for index in range(REQUESTS):
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(leaves[index % len(leaves)], issuer, hashes.SHA1())
            .add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
            .build()
        )
        out.append(request.public_bytes(serialization.Encoding.DER))
    return out


def _load(send: Callable[[bytes], bytes], requests: list[bytes]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    pending = iter(requests)

    def worker() -> None:
        while True:
            with lock:
                body = next(pending, None)
            if body is None:
                return
            started = time.perf_counter()
            answer = ocsp.load_der_ocsp_response(send(body))
            if answer.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
                raise RuntimeError(answer.response_status)
            with lock:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(worker) for _ in range(THREADS)]:
            future.result()
    return len(requests) / (time.perf_counter() - started), latencies


def _wait(check: Callable[[], object]) -> None:
    for _ in range(200):
        try:
            check()
            return
        except (httpx.HTTPError, OSError, ssl.SSLError):
            time.sleep(0.05)
    raise RuntimeError("the server did not start")


def _row(name: str, rate: float, latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"| {name} | {rate:,.0f} | {statistics.median(ms):.1f} | {p99:.1f} |"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fleetpki-bench-") as scratch:
        folder = Path(scratch)
        api_port, openssl_port = free_port(), free_port()
        home = folder / "home"
        settings = Settings.default_for(home).with_changes(
            public_url=f"https://127.0.0.1:{api_port}", api_port=api_port
        )
        fleet = init_home(settings).app
        admin = Actor.local_admin()
        leaves: list[x509.Certificate] = []
        with fleet.transaction() as session:
            ca = next(c for c in authority.list_cas(session) if c.tier == "issuing")
            issuer = authority.ca_certificate(ca)
            key_ref = ca.key_ref
            for name in ("good", "revoked"):
                domains.register_domain(
                    session,
                    admin,
                    ca_id=ca.id,
                    template_id=None,
                    name=f"dev-{name}",
                    owners=[admin.principal_id],
                    requesters=[admin.principal_id],
                    now=fleet.now(),
                )
                record, issued = certificates.issue(
                    session,
                    admin,
                    fleet.keystore,
                    fleet.urls,
                    IssueCommand(ca_id=ca.id, csr=make_csr(f"dev-{name}")[1]),
                    now=fleet.now(),
                )
                leaves.append(issued.certificate)
                if name == "revoked":
                    certificates.revoke(
                        session, admin, record, RevocationReason.KEY_COMPROMISE, now=fleet.now()
                    )
        fleet.close()
        # openssl's responder needs the CA key in the clear: decrypt it for this run only.
        key = serialization.load_pem_private_key(
            (home / "keys" / key_ref.removeprefix("file:")).read_bytes(),
            password=load_or_create_passphrase(home),
        )
        (folder / "ca-key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (folder / "ca.pem").write_bytes(issuer.public_bytes(serialization.Encoding.PEM))
        expiry = leaves[0].not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        revoked_at = time.strftime("%y%m%d%H%M%SZ", time.gmtime())
        (folder / "index.txt").write_text(
            f"V\t{expiry}\t\t{leaves[0].serial_number:X}\tunknown\t/CN=dev-good\n"
            f"R\t{expiry}\t{revoked_at},keyCompromise\t{leaves[1].serial_number:X}\tunknown\t/CN=dev-revoked\n"
        )
        requests = _requests(leaves, issuer)
        fleet_server = subprocess.Popen(
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
        openssl_server = subprocess.Popen(
            [
                "openssl",
                "ocsp",
                "-index",
                str(folder / "index.txt"),
                "-port",
                str(openssl_port),
                "-ignore_err",
                "-rsigner",
                str(folder / "ca.pem"),
                "-rkey",
                str(folder / "ca-key.pem"),
                "-CA",
                str(folder / "ca.pem"),
                "-nmin",
                "60",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            bundle = home / "tls" / "ca-bundle.pem"
            _wait(
                lambda: httpx.get(
                    f"{settings.public_url}/healthz",
                    verify=ssl.create_default_context(cafile=str(bundle)),
                    timeout=1,
                )
            )
            headers = {"Content-Type": "application/ocsp-request"}
            local = threading.local()

            def fleet_send(body: bytes) -> bytes:
                client = getattr(local, "client", None)
                if client is None:
                    client = local.client = httpx.Client(
                        verify=ssl.create_default_context(cafile=str(bundle)), timeout=30
                    )
                return client.post(
                    f"{settings.public_url}/ocsp", content=body, headers=headers
                ).content

            def openssl_send(body: bytes) -> bytes:
                return httpx.post(
                    f"http://127.0.0.1:{openssl_port}/", content=body, headers=headers, timeout=30
                ).content

            _wait(lambda: openssl_send(requests[0]))
            fleet_rate, fleet_lat = _load(fleet_send, requests)
            openssl_rate, openssl_lat = _load(openssl_send, requests)
        finally:
            for process in (fleet_server, openssl_server):
                process.terminate()
                process.wait(15)
    print(
        f"\nOCSP, EC P-256 CA, {REQUESTS} requests with nonces (good, revoked), {THREADS} threads"
    )
    print("| responder | responses/s | p50 ms | p99 ms |\n|---|---|---|---|")
    print(_row("fleetpki POST /ocsp over HTTPS (database lookup)", fleet_rate, fleet_lat))
    print(_row("openssl ocsp -port over HTTP (index.txt)", openssl_rate, openssl_lat))
    print(f"| ratio fleetpki / openssl | {fleet_rate / openssl_rate:.2f} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
