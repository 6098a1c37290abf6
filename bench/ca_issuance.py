"""Certificate issuance: fleetpki's HTTPS API vs cfssl's sign API, same CA, same CSRs.

Run: ``.venv/bin/python bench/ca_issuance.py`` (about 20 s; ``bash scripts/ensure-bench-deps.sh``
installs cfssl first).  Both servers sign with fleetpki's EC P-256 issuing CA (its key is
exported unencrypted into a temporary folder for cfssl) and get the same prepared EC P-256
CSRs, each with its own key, from the same load generator: ``wrk`` (C; ``bench/wrk_bodies.lua``
POSTs prepared JSON bodies in turn, each with a CSR of its own), ``CONNECTIONS`` keep-alive
connections, timed rounds alternating between the servers (see ``ca_common.py``); the
table shows the CPU that wrk used, so that a reader sees it was not the limit:

- fleetpki: ``POST /v1/certificates`` over HTTPS (TLS 1.3) to ``fleetpki serve --only ca``
  in its own process, with an admin API token; each issuance checks the token and the
  requester's rights, runs the whole pipeline (CSR proof of possession, policy, signing,
  the check of the signed result) and commits the certificate and its audit entry to
  SQLite before answering.
- cfssl 1.2.0 (Debian's golang-cfssl): ``POST /api/v1/cfssl/sign`` over plain HTTP to
  ``cfssl serve`` in its own process; no authentication, and it stores nothing.

Reference lines (in process, one core, no HTTP): the pure pipeline
``fleetpki.pki.issuance.issue_certificate`` with the FileKeyStore signer, split into its
signing step and the check of the signed certificate; the CSR parse with its signature
check (done per request before the pipeline); and ``fleet.certificates.issue`` with
its SQLite unit of work, as the API runs it.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import httpx

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
from fleetpki.pki import IssuanceRequest, ParsedCSR, Template, issue_certificate, parse_csr
from fleetpki.pki.issuance import (
    Issuer,
    Plan,
    build_certificate,
    check_certificate,
    check_key_policy,
    resolve_names,
    resolve_usages,
    resolve_validity,
)
from fleetpki.services.certificates import IssueCommand

ROUNDS = 3  # per server, alternating
SECONDS = 3  # per round
DOMAINS = 400  # registered device names; the CSRs cycle through them
CSRS = 12_000  # distinct CSRs, each with its own key; more than fleetpki issues in a run
THREADS, CONNECTIONS = 1, 8  # wrk's
JSON = "application/json"
IN_PROCESS = 200  # certificates per in-process round (pipeline); a quarter for the service

T = TypeVar("T")


def _per_item_us(action: Callable[[T], object], items: Sequence[T], rounds: int = 5) -> float:
    """The median over rounds of the mean CPU time per item, in µs."""
    times = []
    for _ in range(rounds):
        started = time.process_time()  # CPU: a busy shared machine stretches wall time
        for item in items:
            action(item)
        times.append((time.process_time() - started) / len(items) * 1e6)
    return statistics.median(times)


def in_process(fleet_home: FleetHome) -> dict[str, float]:
    """µs per certificate for the pipeline, its parts, the CSR parse and the service."""
    fleet = fleet_home.fleet
    names = [f"inproc-{index}" for index in range(IN_PROCESS)]
    fleet_home.register(names)
    pems = [csr_pem(name) for name in names]
    parsed = [parse_csr(pem) for pem in pems]
    # The signing context the issuance service builds for this CA (authority.issuer_for).
    issuer = Issuer(
        certificate=fleet_home.ca_certificate,
        signer=fleet.keystore.signer(fleet_home.key_ref),
        crl_url=fleet.urls.crl_url(fleet_home.ca_id),
        ocsp_url=fleet.urls.ocsp_url(),
        ca_issuers_url=fleet.urls.ca_issuers_url(fleet_home.ca_id),
    )
    template = Template(str(uuid.uuid4()))
    now = fleet.now()

    def pipeline(csr: ParsedCSR) -> None:
        issue_certificate(
            IssuanceRequest(csr=csr), template, issuer, may_request=lambda _n: True, now=now
        )

    def plan(csr: ParsedCSR) -> Plan:
        # The steps before signing, as issue_certificate runs them.
        request = IssuanceRequest(csr=csr)
        spec = check_key_policy(csr, template)
        cn, sans = resolve_names(request, template, lambda _n: True)
        not_before, not_after = resolve_validity(request, template, issuer, now)
        usages, ekus = resolve_usages(request, template, spec)
        return Plan(csr.public_key, spec, cn, sans, not_before, not_after, usages, ekus)

    plans = [plan(csr) for csr in parsed]
    signed = [(build_certificate(p, issuer), p) for p in plans]

    def service(pem: str) -> None:
        fleet.certificates.issue(fleet_home.admin, IssueCommand(ca_id=fleet_home.ca_id, csr=pem))

    return {
        "pipeline": _per_item_us(pipeline, parsed),
        "sign": _per_item_us(lambda p: build_certificate(p, issuer), plans),
        "check": _per_item_us(lambda s: check_certificate(s[0], s[1], issuer), signed),
        "parse": _per_item_us(parse_csr, pems),
        # Each service call stores a certificate, so each round gets CSRs of its own.
        "service": statistics.median(
            _per_item_us(service, pems[start : start + IN_PROCESS // 4], rounds=1)
            for start in range(0, IN_PROCESS - IN_PROCESS // 4 + 1, IN_PROCESS // 4)
        ),
    }


def _cfssl_config(folder: Path) -> Path:
    config = folder / "cfssl-config.json"
    # The same leaf profile as fleetpki's default template: digital signature, client auth.
    usages = ["digital signature", "client auth"]
    config.write_text(json.dumps({"signing": {"default": {"expiry": "8760h", "usages": usages}}}))
    return config


def _issue_body(ca_id: str, csr: str) -> bytes:
    return json.dumps({"csr": csr, "ca_id": ca_id}).encode()


def main() -> int:
    if shutil.which("cfssl") is None:
        print("cfssl is missing: run `bash scripts/ensure-bench-deps.sh` (Debian's golang-cfssl)")
        return 1
    with tempfile.TemporaryDirectory(prefix="fleetpki-bench-") as scratch:
        folder = Path(scratch)
        fleet_home = make_home(folder)
        reference = in_process(fleet_home)
        names = [f"dev-{index}" for index in range(DOMAINS)]
        fleet_home.register(names)
        csrs = [csr_pem(names[index % DOMAINS]) for index in range(CSRS)]
        ca_id = fleet_home.ca_id
        fleet_bodies = write_bodies(folder / "fleet.bin", [_issue_body(ca_id, c) for c in csrs])
        cfssl_bodies = write_bodies(
            folder / "cfssl.bin",
            [json.dumps({"certificate_request": c}).encode() for c in csrs],
        )
        admin = fleet_home.admin
        token = fleet_home.fleet.principals.create_token(admin, admin.principal_id)
        ca_cert, ca_key = export_ca(fleet_home, folder)
        cfssl_url = f"http://127.0.0.1:{free_port()}"
        cfssl = [
            "cfssl",
            "serve",
            "-address",
            "127.0.0.1",
            "-port",
            cfssl_url.rsplit(":", 1)[1],
            "-ca",
            str(ca_cert),
            "-ca-key",
            str(ca_key),
            "-config",
            str(_cfssl_config(folder)),
        ]
        wrk = {"content_type": JSON, "seconds": SECONDS, "threads": THREADS}
        fleet_load, cfssl_load = Load(), Load()
        with (
            fleetpki_server(fleet_home) as fleet_server,
            process(
                cfssl, lambda: httpx.get(f"{cfssl_url}/api/v1/cfssl/health", timeout=1)
            ) as cfssl_server,
        ):
            authorization = f"Bearer {token.secret}"
            # Both issue: one request each before the rounds (also warms both up).
            issued = httpx.post(
                f"{fleet_home.base_url}/v1/certificates",
                content=_issue_body(ca_id, csr_pem(names[0])),
                headers={"Content-Type": JSON, "Authorization": authorization},
                verify=str(fleet_home.bundle),
                timeout=30,
            )
            issued.raise_for_status()
            signed = httpx.post(
                f"{cfssl_url}/api/v1/cfssl/sign",
                json={"certificate_request": csr_pem(names[0])},
                timeout=30,
            )
            if not signed.json().get("success"):
                raise RuntimeError(signed.text)
            for _ in range(ROUNDS):
                wrk_round(
                    fleet_load,
                    fleet_server.pid,
                    f"{fleet_home.base_url}/v1/certificates",
                    fleet_bodies,
                    authorization=authorization,
                    connections=CONNECTIONS,
                    **wrk,  # type: ignore[arg-type]
                )
                wrk_round(
                    cfssl_load,
                    cfssl_server.pid,
                    f"{cfssl_url}/api/v1/cfssl/sign",
                    cfssl_bodies,
                    connections=CONNECTIONS,
                    **wrk,  # type: ignore[arg-type]
                )
        if fleet_load.requests > CSRS:
            print(f"warning: fleetpki was sent {fleet_load.requests} requests, {CSRS} CSRs")
    print(
        f"\ncertificate issuance over HTTP, EC P-256 issuing CA (the same for both) and "
        f"{CSRS} distinct CSRs, {ROUNDS} rounds of {SECONDS} s, wrk -t{THREADS} -c{CONNECTIONS}"
    )
    print(header("server", "issuances/s"))
    print(
        fleet_load.row(
            f"fleetpki POST /v1/certificates, HTTPS, token, stored in SQLite, {WORKERS} worker(s)"
        )
    )
    print(cfssl_load.row("cfssl 1.2.0 serve /api/v1/cfssl/sign, HTTP, no auth, not stored"))
    print(ratio_row("cfssl", fleet_load, cfssl_load))
    print(
        "\nin process, one core, µs per certificate (median of rounds): "
        f"pipeline issue_certificate {reference['pipeline']:.0f} "
        f"(of which signing {reference['sign']:.0f}, check of the signed certificate "
        f"{reference['check']:.0f}); CSR parse and signature check {reference['parse']:.0f}; "
        f"fleet.certificates.issue with the SQLite commit and audit entry "
        f"{reference['service']:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
