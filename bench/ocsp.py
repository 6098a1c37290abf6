"""OCSP responses: fleetpki's responder vs ``openssl ocsp`` as a responder, same CA, same requests.

Run: ``.venv/bin/python bench/ocsp.py`` (about 40 s; ``bash scripts/ensure-bench-deps.sh``
installs wrk).  Both answer for fleetpki's EC P-256 issuing CA (its key is exported
unencrypted into a temporary folder for openssl) about the same ``CERTIFICATES`` device
certificates, half of them revoked, and get the same prepared DER requests from the same
load generator (``wrk``, see ``ca_common.py``), in two kinds:

- without a nonce, as RFC 5019 clients send them (TLS stacks, browsers, anything behind
  an HTTP cache): one request per certificate, sent in turn;
- with a nonce each (RFC 8954), so every request is distinct and must be signed anew.

The servers:

- fleetpki: ``POST /ocsp`` over HTTPS (TLS 1.3, keep-alive) to ``fleetpki serve --only ca``
  in its own process (``OcspFastPath`` in ``fleetpki.api.status``, in front of FastAPI).
  A request without a nonce is answered from the cache of signed responses
  (``fleetpki.services.ocsp_cache``); one with a nonce is signed on demand around the
  cached response's prepared parts (``fleetpki.pki.ocsp_prepared``: only its
  ResponseData is encoded and signed), on the event loop.
- openssl 3 (the reference responder): ``openssl ocsp -index index.txt -port`` over plain
  HTTP, one process, an ``index.txt`` in ``openssl ca`` format; it looks every serial up
  and signs every response, answers HTTP/1.0 and closes the connection after each one,
  so wrk reconnects for every request (inside the timed part, as its real clients do).

Reference lines give ``fleet.revocation_status.ocsp`` in process (one core, no HTTP) for
both kinds.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

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
    write_bodies,
    wrk_round,
)

from fleetpki.api.background import free_port
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services.certificates import IssueCommand

ROUNDS = 3  # per responder and kind of request, alternating
SECONDS = 3  # per round
CERTIFICATES = 200  # half good, half revoked
NONCE_REQUESTS = 20_000  # distinct requests with nonces, sent in turn
THREADS, CONNECTIONS = 1, 8  # wrk's
OCSP_REQUEST = "application/ocsp-request"


def _leaves(fleet_home: FleetHome) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """Issue ``CERTIFICATES`` device certificates and revoke every second one."""
    fleet, admin = fleet_home.fleet, fleet_home.admin
    names = [f"dev-{index}" for index in range(CERTIFICATES)]
    fleet_home.register(names)
    good: list[x509.Certificate] = []
    revoked: list[x509.Certificate] = []
    for index, name in enumerate(names):
        issued = fleet.certificates.issue(
            admin, IssueCommand(ca_id=fleet_home.ca_id, csr=csr_pem(name))
        ).issued
        if index % 2:
            fleet.certificates.revoke(admin, issued.serial_hex, RevocationReason.KEY_COMPROMISE)
            revoked.append(issued.certificate)
        else:
            good.append(issued.certificate)
    return good, revoked


def _index(
    folder: Path, good: Sequence[x509.Certificate], revoked: Sequence[x509.Certificate]
) -> Path:
    """An ``openssl ca`` index: status, expiry, revocation, serial (hex), file, subject."""
    revoked_at = time.strftime("%y%m%d%H%M%SZ", time.gmtime())
    lines = []
    for certificate, state in [(c, "V") for c in good] + [(c, "R") for c in revoked]:
        expiry = certificate.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        revocation = f"{revoked_at},keyCompromise" if state == "R" else ""
        subject = certificate.subject.rfc4514_string()
        lines.append(
            f"{state}\t{expiry}\t{revocation}\t{certificate.serial_number:X}\tunknown\t/{subject}\n"
        )
    index = folder / "index.txt"
    index.write_text("".join(lines))
    return index


def _request(leaf: x509.Certificate, issuer: x509.Certificate, *, nonce: bool) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _status(answer: bytes) -> ocsp.OCSPCertStatus:
    response = ocsp.load_der_ocsp_response(answer)
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise RuntimeError(f"OCSP {response.response_status}")
    return response.certificate_status


def _in_process_us(fleet_home: FleetHome, requests: Sequence[bytes]) -> float:
    fleet = fleet_home.fleet
    times = []
    for _ in range(5):
        started = time.process_time()  # CPU: a busy shared machine stretches wall time
        for body in requests:
            fleet.revocation_status.ocsp(body)
        times.append((time.process_time() - started) / len(requests) * 1e6)
    return statistics.median(times)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fleetpki-bench-") as scratch:
        folder = Path(scratch)
        fleet_home = make_home(folder)
        good, revoked = _leaves(fleet_home)
        issuer = fleet_home.ca_certificate
        leaves = [leaf for pair in zip(good, revoked, strict=True) for leaf in pair]
        plain = [_request(leaf, issuer, nonce=False) for leaf in leaves]
        nonced = [
            _request(leaves[i % len(leaves)], issuer, nonce=True) for i in range(NONCE_REQUESTS)
        ]
        kinds = {
            "no nonce": write_bodies(folder / "plain.bin", plain),
            "nonce": write_bodies(folder / "nonced.bin", nonced),
        }
        reference = {
            "no nonce": _in_process_us(fleet_home, plain[:100]),
            "nonce": _in_process_us(fleet_home, nonced[:100]),
        }
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
        headers = {"Content-Type": OCSP_REQUEST}
        wrk: dict[str, Any] = {
            "content_type": OCSP_REQUEST,
            "seconds": SECONDS,
            "threads": THREADS,
            "connections": CONNECTIONS,
        }
        loads = {kind: (Load(), Load()) for kind in kinds}

        def openssl_server() -> AbstractContextManager[subprocess.Popen[bytes]]:
            # A new one for every round: when a client closes a connection without
            # sending on it (wrk does, for those it opened as a round ends), `openssl
            # ocsp` 3.0 spins on its end of file and answers nobody again.
            return process(
                openssl, lambda: httpx.post(openssl_url, content=plain[0], headers=headers)
            )

        with fleetpki_server(fleet_home) as fleet_server:
            # Both say the same thing: good, then revoked, with and without a nonce.
            for url, verify in ((fleet_url, str(fleet_home.bundle)), (openssl_url, True)):
                with openssl_server(), httpx.Client(verify=verify, timeout=30) as probe:
                    statuses = [
                        _status(probe.post(url, content=body, headers=headers).content)
                        for body in (plain[0], plain[1], nonced[0], nonced[1])
                    ]
                    # Every certificate once (the warm-up fills fleetpki's cache).
                    for body in plain:
                        _status(probe.post(url, content=body, headers=headers).content)
                expected = [ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED] * 2
                if statuses != expected:
                    raise RuntimeError(f"{url} answered {statuses}")
            for kind, bodies in kinds.items():
                fleet_load, openssl_load = loads[kind]
                for _ in range(ROUNDS):
                    wrk_round(fleet_load, fleet_server.pid, fleet_url, bodies, **wrk)
                    with openssl_server() as server:
                        wrk_round(openssl_load, server.pid, openssl_url, bodies, **wrk)
    for kind, (fleet_load, openssl_load) in loads.items():
        described = "with a nonce each" if kind == "nonce" else "without a nonce"
        print(
            f"\nOCSP over HTTP POST, requests {described}, "
            f"EC P-256 issuing CA (the same for both), {CERTIFICATES} certificates (half revoked), "
            f"{ROUNDS} rounds of {SECONDS} s, wrk -t{THREADS} -c{CONNECTIONS}"
        )
        print(header("responder", "responses/s"))
        print(
            fleet_load.row(f"fleetpki POST /ocsp, HTTPS keep-alive, {WORKERS} worker(s) ({kind})")
        )
        print(
            openssl_load.row(f"openssl ocsp -index -port, HTTP, a connection per request ({kind})")
        )
        print(ratio_row("openssl", fleet_load, openssl_load))
    print(
        "\nin process, one core: fleet.revocation_status.ocsp "
        f"{reference['no nonce']:.0f} µs per response without a nonce (cached), "
        f"{reference['nonce']:.0f} µs with a nonce (signed around the cached response's parts) "
        "(median of 5 rounds)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
