"""Where the API server's CPU goes while it issues: py-spy samples of ``fleetpki serve``.

Run: ``.venv/bin/python bench/issuance_profile.py`` (about 30 s; needs ``py-spy`` on the
PATH or in ``$PY_SPY``: ``pip install py-spy``, it is not a project dependency).  The same
set-up as ``ca_issuance.py`` (HTTPS, an admin API token, SQLite, the audit entry), with
wrk sending ``POST /v1/certificates`` for ``SECONDS`` while py-spy samples the server
process, counting only the thread that holds the GIL (where Python spends CPU: a
thread waiting on a lock, the database or the network holds none).  Prints the share
of samples
in which each of the listed parts of the request path is on the stack (inclusive, so
they overlap: a part's children count in it), then the top functions by own samples.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# py-spy samples one process: profile one worker (the supervisor of several does no work).
os.environ.setdefault("FLEETPKI_BENCH_WORKERS", "1")
sys.path.insert(0, str(Path(__file__).parent))
from ca_common import Load, csr_pem, fleetpki_server, make_home, write_bodies, wrk_round

SECONDS = 12
DOMAINS = 200
CSRS = 6000
RATE = 250  # samples per second

# Where each sample's innermost frame is: the first pattern that matches its module.
LAYERS: list[tuple[str, str]] = [
    (
        "X.509 (cryptography; fleetpki.pki: CSR check, signing, check of the result)",
        r"(cryptography/|fleetpki/pki/|fleetpki/keystore/)",
    ),
    ("SQLAlchemy (ORM and Core) and the sqlite3 driver", r"(sqlalchemy/|sqlite3)"),
    (
        "HTTP: uvicorn, ASGI middlewares, FastAPI, Starlette, pydantic, anyio, ssl",
        r"(uvicorn/|starlette/|fastapi/|pydantic|anyio/|asyncio/|ssl\.py|h11/|httptools)",
    ),
    ("fleetpki's own code (services, store, api, views)", r"fleetpki/"),
    ("the standard library (threads, queues, json, re, datetime)", r"."),
]
# The steps of one request (inclusive: a step's callees count in it).
STEPS: list[tuple[str, str]] = [
    ("event loop: TLS, HTTP parsing, middlewares, routing, JSON body", r"^(?!.*WorkerThread)"),
    (
        "token check and issuance (certificates.issue_with_token, one unit of work)",
        r"CertificateService\.issue_with_token ",
    ),
    ("  token check (authenticate_token_in)", r"authenticate_token_in "),
    (
        "  the signing context: stamp read, kept context (SigningContexts.get)",
        r"SigningContexts\.get ",
    ),
    ("  template (SigningContexts.template)", r"SigningContexts\.template "),
    ("  CSR parse and proof of possession (parse_csr)", r"parse_csr "),
    (
        "  the pipeline: names, policy, signing, check (issue_certificate)",
        r"issue_certificate \(fleetpki/pki/issuance",
    ),
    ("  domain look-ups (DomainAccess: one read a name)", r"request_access "),
    ("  INSERT of the certificate (Core)", r"SqlCertificateRepository\.add"),
    ("  audit entry (write_audit, Core)", r"write_audit "),
    (
        "  commit and the end of the unit (SqlStore.transaction exit)",
        r"SqlStore\.transaction \(fleetpki/store/unit_of_work\.py",
    ),
    ("the answer (_issued: views, PEM, presenters)", r"_issued "),
    ("response model and JSON (FastAPI serialize_response)", r"serialize_response"),
]


def _py_spy() -> str:
    found = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is missing: pip install py-spy, or set PY_SPY")
    return found


def _summarise(raw: Path) -> None:
    samples: list[tuple[list[str], int]] = []
    for line in raw.read_text().splitlines():
        stack, _, tally = line.rpartition(" ")
        if stack:
            samples.append((stack.split(";"), int(tally)))
    total = sum(count for _, count in samples)
    if not total:
        raise SystemExit(
            f"py-spy recorded no samples of the server (see {raw}); is ptrace allowed?"
        )
    print(f"\n{total} GIL-holding samples of the server over {SECONDS} s\n")
    layers: collections.Counter[str] = collections.Counter()
    for frames, count in samples:
        leaf = frames[-1]
        layers[next(name for name, pattern in LAYERS if re.search(pattern, leaf))] += count
    print("| where the CPU is (innermost frame) | share of samples |\n|---|---|")
    for name, _ in LAYERS:
        print(f"| {name} | {layers[name] / total * 100:.1f} % |")
    print("\n| step of the request (inclusive) | share of samples |\n|---|---|")
    for name, pattern in STEPS:
        regex = re.compile(pattern)
        if pattern.startswith("^"):
            hits = sum(c for frames, c in samples if regex.search(";".join(frames)))
        else:
            hits = sum(c for frames, c in samples if any(regex.search(f) for f in frames))
        print(f"| {name} | {hits / total * 100:.1f} % |")
    own: collections.Counter[str] = collections.Counter()
    for frames, count in samples:
        own[frames[-1]] += count
    print("\n| top functions by own samples | share |\n|---|---|")
    for frame, count in own.most_common(15):
        print(f"| `{frame}` | {count / total * 100:.1f} % |")


def main() -> int:
    py_spy = _py_spy()
    with tempfile.TemporaryDirectory(prefix="fleetpki-profile-") as scratch:
        folder = Path(scratch)
        fleet_home = make_home(folder)
        names = [f"dev-{index}" for index in range(DOMAINS)]
        fleet_home.register(names)
        ca_id = fleet_home.ca_id
        bodies = write_bodies(
            folder / "bodies.bin",
            [
                json.dumps({"csr": csr_pem(names[i % DOMAINS]), "ca_id": ca_id}).encode()
                for i in range(CSRS)
            ],
        )
        admin = fleet_home.admin
        token = fleet_home.fleet.principals.create_token(admin, admin.principal_id)
        raw = folder / "profile.txt"
        with fleetpki_server(fleet_home) as server:
            spy = subprocess.Popen(
                [
                    *(py_spy, "record", "-p", str(server.pid), "-r", str(RATE)),
                    *("-d", str(SECONDS), "-f", "raw", "-o", str(raw), "--nonblocking", "--gil"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            load = Load()
            wrk_round(
                load,
                server.pid,
                f"{fleet_home.base_url}/v1/certificates",
                bodies,
                content_type="application/json",
                authorization=f"Bearer {token.secret}",
                seconds=SECONDS,
                threads=1,
                connections=8,
            )
            spy.wait(60)
        print(
            f"issuances/s {load.rates[0]:.0f}, server CPU "
            f"{load.server_cpu / load.requests * 1000:.2f} ms per issuance, errors {load.errors}"
        )
        _summarise(raw)
        if os.environ.get("PROFILE_OUT"):
            shutil.copy(raw, os.environ["PROFILE_OUT"])  # the raw samples, for a closer look
    return 0


if __name__ == "__main__":
    sys.exit(main())
