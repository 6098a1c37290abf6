"""OCSP responses: fleetpki's responder vs ``openssl ocsp`` as a responder, same CA, same requests.

Run: ``.venv/bin/python bench/ocsp.py`` (about 15 s).  Both answer for fleetpki's EC P-256
issuing CA (its key is exported unencrypted into a temporary folder for openssl) and get
the same prepared DER requests, half for a good and half for a revoked certificate, each
with its own nonce, from ``CLIENTS`` client threads:

- fleetpki: ``POST /ocsp`` over HTTPS (TLS 1.3, keep-alive) to ``fleetpki serve --only ca``
  in its own process (the route in ``fleetpki.api.status``); each answer looks the serial
  up in SQLite and is signed by the CA key.
- openssl 3 (the reference responder): ``openssl ocsp -index index.txt -port`` over plain
  HTTP, one process, an ``index.txt`` in ``openssl ca`` format holding both serials; it
  answers HTTP/1.0 and closes the connection after each response, so its clients
  reconnect for every request (inside the timed part, as real clients of it do).

A reference line gives ``fleet.revocation_status.ocsp`` in process (one core, its SQLite
unit of work, no HTTP).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

sys.path.insert(0, str(Path(__file__).parent))
from ca_common import (
    WORKERS,
    FleetHome,
    Load,
    csr_pem,
    export_ca,
    fleetpki_server,
    header,
    make_home,
    process,
    ratio_row,
    run_round,
)

from fleetpki.api.background import free_port
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services.certificates import IssueCommand

ROUNDS = 3  # per responder, alternating
REQUESTS = 200  # per round
CLIENTS = 4
OCSP_TYPE = {"Content-Type": "application/ocsp-request"}


def _leaves(fleet_home: FleetHome) -> tuple[x509.Certificate, x509.Certificate]:
    """Issue a good and a revoked device certificate."""
    fleet, admin = fleet_home.fleet, fleet_home.admin
    fleet_home.register(["dev-good", "dev-revoked"])
    good, revoked = (
        fleet.certificates.issue(admin, IssueCommand(ca_id=fleet_home.ca_id, csr=csr_pem(name)))
        for name in ("dev-good", "dev-revoked")
    )
    fleet.certificates.revoke(admin, revoked.issued.serial_hex, RevocationReason.KEY_COMPROMISE)
    return good.issued.certificate, revoked.issued.certificate


def _index(folder: Path, good: x509.Certificate, revoked: x509.Certificate) -> Path:
    """An ``openssl ca`` index: status, expiry, revocation, serial (hex), file, subject."""
    expiry = good.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    revoked_at = time.strftime("%y%m%d%H%M%SZ", time.gmtime())
    index = folder / "index.txt"
    index.write_text(
        f"V\t{expiry}\t\t{good.serial_number:X}\tunknown\t/CN=dev-good\n"
        f"R\t{expiry}\t{revoked_at},keyCompromise\t{revoked.serial_number:X}\tunknown"
        "\t/CN=dev-revoked\n"
    )
    return index


def _request(leaf: x509.Certificate, issuer: x509.Certificate) -> bytes:
    builder = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(leaf, issuer, hashes.SHA1())
        .add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def _status(answer: bytes) -> ocsp.OCSPCertStatus:
    response = ocsp.load_der_ocsp_response(answer)
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise RuntimeError(f"OCSP {response.response_status}")
    return response.certificate_status


def _in_process_us(fleet_home: FleetHome, requests: list[bytes]) -> float:
    fleet = fleet_home.fleet
    times = []
    for _ in range(5):
        started = time.perf_counter()
        for body in requests:
            fleet.revocation_status.ocsp(body)
        times.append((time.perf_counter() - started) / len(requests) * 1e6)
    return statistics.median(times)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fleetpki-bench-") as scratch:
        folder = Path(scratch)
        fleet_home = make_home(folder)
        good, revoked = _leaves(fleet_home)
        issuer = fleet_home.ca_certificate
        rounds = [
            [_request(good if i % 2 == 0 else revoked, issuer) for i in range(REQUESTS)]
            for _ in range(ROUNDS)
        ]
        warm = _request(good, issuer)
        reference = _in_process_us(fleet_home, rounds[0][:100])
        ca_cert, ca_key = export_ca(fleet_home, folder)
        openssl_port = free_port()
        openssl_url = f"http://127.0.0.1:{openssl_port}/"
        openssl = [
            "openssl",
            "ocsp",
            "-index",
            str(_index(folder, good, revoked)),
            "-port",
            str(openssl_port),
            "-rsigner",
            str(ca_cert),
            "-rkey",
            str(ca_key),
            "-CA",
            str(ca_cert),
            "-nmin",
            "60",
            "-ignore_err",
        ]
        fleet_url = f"{fleet_home.base_url}/ocsp"

        def fleet_send(client: httpx.Client, body: bytes) -> None:
            _status(client.post(fleet_url, content=body, headers=OCSP_TYPE).content)

        def openssl_send(client: httpx.Client, body: bytes) -> None:
            _status(client.post(openssl_url, content=body, headers=OCSP_TYPE).content)

        def fleet_client() -> httpx.Client:
            return httpx.Client(verify=str(fleet_home.bundle), timeout=30)

        def openssl_client() -> httpx.Client:
            return httpx.Client(timeout=30)

        fleet_load, openssl_load = Load(), Load()
        with (
            fleetpki_server(fleet_home) as fleet_server,
            process(
                openssl, lambda: httpx.post(openssl_url, content=warm, headers=OCSP_TYPE)
            ) as openssl_server,
        ):
            # Both say the same thing: good, then revoked.
            for send, client in ((fleet_send, fleet_client), (openssl_send, openssl_client)):
                with client() as probe:
                    url = fleet_url if send is fleet_send else openssl_url
                    statuses = [
                        _status(probe.post(url, content=body, headers=OCSP_TYPE).content)
                        for body in rounds[0][:2]
                    ]
                if statuses != [ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED]:
                    raise RuntimeError(f"{url} answered {statuses}")
            for requests in rounds:
                run_round(
                    fleet_load, fleet_server.pid, warm, requests, fleet_send, fleet_client, CLIENTS
                )
                run_round(
                    openssl_load,
                    openssl_server.pid,
                    warm,
                    requests,
                    openssl_send,
                    openssl_client,
                    CLIENTS,
                )
    print(
        f"\nOCSP over HTTP POST, EC P-256 issuing CA (the same for both), requests with nonces "
        f"(half good, half revoked), {ROUNDS} rounds of {REQUESTS}, {CLIENTS} client threads"
    )
    print(header("responder", "responses/s"))
    print(
        fleet_load.row(f"fleetpki POST /ocsp, HTTPS keep-alive, SQLite lookup, {WORKERS} worker(s)")
    )
    print(openssl_load.row("openssl ocsp -index -port, HTTP, new connection per request"))
    print(ratio_row("openssl", fleet_load, openssl_load))
    print(
        f"\nin process, one core: fleet.revocation_status.ocsp with its SQLite "
        f"unit of work {reference:.0f} µs per response (median of 5 rounds)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
