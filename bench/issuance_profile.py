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

sys.path.insert(0, str(Path(__file__).parent))
from ca_common import Load, csr_pem, fleetpki_server, make_home, write_bodies, wrk_round

SECONDS = 12
DOMAINS = 200
CSRS = 6000
RATE = 250  # samples per second

# The parts of the request path to report, each a pattern over a sample's frames
# ("function (module path:line)"), matched anywhere on the stack.
PARTS: list[tuple[str, str]] = [
    ("whole request in the ASGI app (FastAPI, middlewares, route)", r"\(fastapi/applications\.py"),
    ("TLS read/write (asyncio/uvloop transport, ssl)", r"(sslproto|ssl\.py|uvloop)"),
    ("HTTP parsing and writing (h11 / httptools in uvicorn)", r"uvicorn/protocols/http"),
    ("thread hops (anyio to_thread, run_in_threadpool)", r"anyio/_backends/_asyncio\.py"),
    ("request body parse and validation (pydantic, json)", r"(fastapi/routing\.py:\d+\)|pydantic)"),
    ("authentication (principals.authenticate_token)", r"authenticate_token"),
    ("issuance service call (certificates.issue)", r"services/certificates\.py"),
    ("  issuance pipeline (pki.issuance.issue_certificate)", r"issue_certificate \(.*pki/issuance"),
    ("  CSR parse and signature check (pki.csr)", r"pki/csr\.py"),
    ("  SQLAlchemy ORM (session, flush, queries)", r"sqlalchemy/orm"),
    ("  SQLAlchemy Core and the sqlite3 driver", r"(sqlalchemy/(engine|sql|pool)|sqlite3)"),
    ("  commit (session.commit / transaction exit)", r"(commit \(|_commit_impl)"),
    ("  audit entry", r"audit"),
    ("response model and JSON (fastapi serialize_response, pydantic dump)", r"serialize_response"),
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
    print(f"\n{total} GIL-holding samples of the server over {SECONDS} s\n")
    print("| part of the request path | share of samples (inclusive) |\n|---|---|")
    for name, pattern in PARTS:
        regex = re.compile(pattern)
        hits = sum(count for frames, count in samples if any(regex.search(f) for f in frames))
        print(f"| {name} | {hits / total * 100:.1f} % |")
    own: collections.Counter[str] = collections.Counter()
    for frames, count in samples:
        own[frames[-1]] += count
    print("\n| top functions by own samples | share |\n|---|---|")
    for frame, count in own.most_common(25):
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
