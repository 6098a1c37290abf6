"""fleetpki at 10,000 and 1,000,000 stored certificates, on SQLite and PostgreSQL.

For each backend and each size, a fresh home is made, ``size`` certificate records are
bulk-loaded straight into its ``certificates`` table (one SQLAlchemy Core executemany
per 20,000 rows, not through the API: records that look like issued certificates, a
share of them revoked, expiries spread over the next 90 days), and ``fleetpki serve
--only ca`` is started on it. Then, over HTTPS with a token, as real clients do:

- issuance rate: ``POST /v1/certificates`` from 4 keep-alive clients;
- OCSP rate: ``POST /ocsp`` with nonces for stored serials (half of them revoked);
  both in timed rounds that alternate between the sizes (every size's server runs at
  once), so that a burst of load from other users of the machine hits all sizes alike:
  the median round's rate, and the server CPU per request over all rounds;
- ``fleetpki cert list --expiring 30d`` run as a command on the home (local mode);
- revocation latency: ``POST /v1/certificates/{serial}/revoke``, one at a time, 25 with
  an up-to-date CRL and 25 more while the next CRL builds;
- the CRL: the time from the first read after those revocations (served at once from
  the cache, the previous CRL) until the rebuilt CRL is served (polled every
  ``CRL_POLL_S``, each poll a download of the whole CRL), and the p99 latency of
  OCSP requests sent meanwhile from another client (the build must not block them);
- the server's memory: VmRSS and its peak VmHWM from /proc.

    .venv/bin/python bench/scale.py                          # 10,000 and 1,000,000
    .venv/bin/python bench/scale.py --sizes 2000,20000 --backends sqlite   # quick
    .venv/bin/python bench/scale.py --sizes 10000,1000000 --backends sqlite --rounds 6

The 1,000,000 runs take minutes each (loading, then a CRL of ``size * revoked-share``
entries). PostgreSQL is a throwaway cluster started for the run (tests/support).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from sqlalchemy import create_engine, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ca_common import FleetHome, cpu_seconds, csr_pem, fleetpki_server

from fleetpki.api.background import free_port
from fleetpki.application import init_home
from fleetpki.services import Actor
from fleetpki.settings import Settings
from fleetpki.store.models import TemplateRecord

CLIENTS = 4
T = TypeVar("T")
OCSP_TYPE = {"Content-Type": "application/ocsp-request"}
CHUNK = 20_000
#: How often the CRL is fetched while waiting for the rebuilt one.
CRL_POLL_S = 0.5


@dataclass
class Figures:
    """What one (backend, size) run measured."""

    load_s: float = 0.0
    issuance_per_s: float = 0.0
    ocsp_per_s: float = 0.0
    issuance_rates: list[float] = field(default_factory=list)
    ocsp_rates: list[float] = field(default_factory=list)
    issuance_cpu_ms: float = 0.0
    ocsp_cpu_ms: float = 0.0
    cert_list_s: float = 0.0
    revoke_p50_ms: float = 0.0
    revoke_p99_ms: float = 0.0
    revoke_building_p50_ms: float = 0.0
    revoke_building_p99_ms: float = 0.0
    crl_entries: int = 0
    crl_first_read_ms: float = 0.0
    crl_rebuild_s: float = 0.0
    ocsp_during_build_p99_ms: float = 0.0
    rss_mb: float = 0.0
    hwm_mb: float = 0.0


def _home(folder: Path, database_url: str | None) -> FleetHome:
    api_port = free_port()
    home = folder / "home"
    settings = Settings.default_for(home, database_url).with_changes(
        public_url=f"https://127.0.0.1:{api_port}",
        api_port=api_port,
        mqtt_port=free_port(),
        key_passphrase_file=str(folder / "key-passphrase"),
    )
    fleet = init_home(settings).app
    issuing = fleet.cas.current_issuer()
    return FleetHome(
        home, settings, fleet, issuing.id, "", issuing.certificate, Actor.local_admin()
    )


_COLUMNS = (
    "ca_id, template_id, domain_id, serial_hex, subject_cn, sans, key_spec, not_before, "
    "not_after, sha1_hex, sha256_hex, der, status, revoked_at, revocation_reason, "
    "requested_by, created_at, ca_generation"
)


def bulk_load(
    fleet_home: FleetHome, size: int, revoked_share: float
) -> tuple[list[tuple[str, bool]], int]:
    """Insert ``size`` certificate records; return a sample of (serial_hex, revoked) and
    how many are revoked.

    Through the driver, not the ORM: sqlite3's ``executemany`` and PostgreSQL's ``COPY``,
    with times as the naive UTC that :class:`fleetpki.store.models.UTCDateTime` stores.
    """
    fleet = fleet_home.fleet
    engine = create_engine(fleet.settings.database_url)
    sqlite = engine.dialect.name == "sqlite"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None)

    def stamp(value: dt.datetime) -> object:
        # SQLAlchemy's SQLite DateTime text form.
        return value.strftime("%Y-%m-%d %H:%M:%S.000000") if sqlite else value

    with engine.begin() as connection:
        template_id = connection.scalar(
            select(TemplateRecord.id).where(TemplateRecord.ca_id == fleet_home.ca_id).limit(1)
        )
    # One real certificate's DER stands for all: the column has no uniqueness.
    der = fleet_home.ca_certificate.public_bytes(serialization.Encoding.DER)
    revoke_every = max(1, round(1 / revoked_share)) if revoked_share > 0 else 0
    step = max(2, size // 500)
    not_before = created_at = stamp(now - dt.timedelta(days=1))
    revoked_times = [stamp(now - dt.timedelta(seconds=s)) for s in range(86400)]
    sample: list[tuple[str, bool]] = []
    revoked_total = 0
    started = time.perf_counter()
    with engine.begin() as connection:
        raw = connection.connection.driver_connection
        assert raw is not None
        cursor = raw.cursor()
        if sqlite:
            # Random serials and thumbprints land all over five indexes: keep them in
            # memory while loading (a bench-only setting: the server keeps its own).
            cursor.execute("PRAGMA cache_size=-400000")
        for start in range(0, size, CHUNK):
            rows = []
            for index in range(start, min(size, start + CHUNK)):
                serial = format(secrets.randbits(127) | 1 << 126, "X")
                revoked = revoke_every > 0 and index % revoke_every == 0
                revoked_total += revoked
                not_after = now + dt.timedelta(seconds=(index * 7919) % (90 * 86400))
                rows.append(
                    (
                        fleet_home.ca_id,
                        template_id,
                        None,
                        serial,
                        f"bulk-{index}",
                        "[]",
                        "ec-p256",
                        not_before,
                        stamp(not_after),
                        f"{index:040X}",
                        f"{index:064X}",
                        der,
                        "revoked" if revoked else "valid",
                        revoked_times[index % 86400] if revoked else None,
                        (index % 6) if revoked else None,
                        fleet_home.admin.principal_id,
                        created_at,
                        1,
                    )
                )
                # Pairs of neighbours: one of each pair is revoked when every tenth is.
                if index % step in (0, 1):
                    sample.append((serial, revoked))
            if sqlite:
                marks = ", ".join("?" * 18)
                cursor.executemany(f"INSERT INTO certificates ({_COLUMNS}) VALUES ({marks})", rows)
            else:
                with cursor.copy(f"COPY certificates ({_COLUMNS}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
    with engine.begin() as connection:
        # Statistics for the planner, and on SQLite the load moved out of the WAL into
        # the database file, so that the server's first writes do not pay for it.
        connection.exec_driver_sql("ANALYZE certificates" if not sqlite else "ANALYZE")
        if sqlite:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    print(f"  loaded {size:,} records in {time.perf_counter() - started:.1f} s", flush=True)
    return sample, revoked_total


def _ocsp_request(issuer: x509.Certificate, serial_hex: str) -> bytes:
    name_hash = hashes.Hash(hashes.SHA1())
    name_hash.update(issuer.subject.public_bytes())
    key_hash = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash.finalize(), key_hash, int(serial_hex, 16), hashes.SHA1()
    )
    builder = builder.add_extension(x509.OCSPNonce(secrets.token_bytes(16)), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _status_kb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _crl_number(der: bytes) -> int:
    crl = x509.load_der_x509_crl(der)
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _rate(
    items: Sequence[T],
    send: Callable[[httpx.Client, T], None],
    make_client: Callable[[], httpx.Client],
    clients: int,
) -> float:
    """Requests per second with which ``clients`` threads send every item once.

    Each thread sends the first item once, untimed, so that connecting is outside the
    timed part; then they share the rest.
    """
    lock = threading.Lock()
    pending = iter(items[1:])
    ready = threading.Barrier(clients + 1)

    def worker() -> None:
        with make_client() as client:
            send(client, items[0])
            ready.wait()
            while True:
                with lock:
                    item = next(pending, None)
                if item is None:
                    return
                send(client, item)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(worker) for _ in range(clients)]
        ready.wait()
        started = time.perf_counter()
        for future in futures:
            future.result()
        return (len(items) - 1) / (time.perf_counter() - started)


def _p50_p99(ordered: list[float]) -> tuple[float, float]:
    if not ordered:
        return 0.0, 0.0
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(len(ordered) * 0.99))]


@dataclass
class Prepared:
    """One loaded home, its server and what the measurements send it."""

    fleet_home: FleetHome
    sample: list[tuple[str, bool]]
    revoked_count: int
    token: str
    csrs: list[str]
    ocsp_bodies: list[bytes]
    figures: Figures
    server: subprocess.Popen[bytes] | None = None
    issued_serials: list[str] = field(default_factory=list)
    issuance_cpu: float = 0.0
    issuance_count: int = 0
    ocsp_cpu: float = 0.0
    ocsp_count: int = 0

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.fleet_home.base_url,
            verify=str(self.fleet_home.bundle),
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=120,
        )

    def issue(self, http: httpx.Client, csr: str) -> None:
        answer = http.post("/v1/certificates", json={"csr": csr, "ca_id": self.fleet_home.ca_id})
        answer.raise_for_status()
        self.issued_serials.append(answer.json()["certificate"]["serial"])


def prepare(
    fleet_home: FleetHome,
    sample: list[tuple[str, bool]],
    revoked_count: int,
    requests: int,
    rounds: int,
) -> Prepared:
    """Register the names, make a token, the CSRs and the OCSP requests (before serving)."""
    admin = fleet_home.admin
    # Each issuance round sends requests // rounds distinct CSRs (+1 untimed per client),
    # and the revocations need 50 of the certificates issued.
    count = max(requests, 50 * rounds) + rounds * (CLIENTS + 1)
    names = [f"scale-{i}" for i in range(count)]
    fleet_home.register(names)
    token = fleet_home.fleet.principals.create_token(admin, admin.principal_id).secret
    issuer = fleet_home.ca_certificate
    good = [serial for serial, revoked in sample if not revoked]
    bad = [serial for serial, revoked in sample if revoked] or good
    good = good or bad
    ocsp_bodies = [
        _ocsp_request(issuer, (good if i % 2 else bad)[i % len(good if i % 2 else bad)])
        for i in range(2 * requests + rounds * (CLIENTS + 1))
    ]
    return Prepared(
        fleet_home,
        sample,
        revoked_count,
        token,
        [csr_pem(name) for name in names],
        ocsp_bodies,
        Figures(),
    )


def _ask(http: httpx.Client, body: bytes) -> None:
    answer = http.post("/ocsp", content=body, headers=OCSP_TYPE)
    answer.raise_for_status()
    if ocsp.load_der_ocsp_response(answer.content).response_status.value != 0:
        raise RuntimeError("OCSP refused")


def rate_rounds(prepared: list[Prepared], requests: int, rounds: int) -> None:
    """Issuance, then OCSP, in ``rounds`` timed rounds each, alternating between the
    homes (the order reversed every round); the server's CPU is read around each round."""
    per_round = max(2, requests // rounds)
    csr_at = {id(p): 0 for p in prepared}
    body_at = {id(p): 0 for p in prepared}
    for kind in ("issuance", "ocsp"):
        for number in range(rounds):
            order = prepared if number % 2 == 0 else prepared[::-1]
            for p in order:
                assert p.server is not None
                if kind == "issuance":
                    items: Sequence[object] = p.csrs[csr_at[id(p)] : csr_at[id(p)] + per_round]
                    csr_at[id(p)] += per_round
                else:
                    items = p.ocsp_bodies[body_at[id(p)] : body_at[id(p)] + 2 * per_round]
                    body_at[id(p)] += 2 * per_round
                before = cpu_seconds(p.server.pid)
                if kind == "issuance":
                    rate = _rate(list(items), p.issue, p.client, CLIENTS)  # type: ignore[arg-type]
                    p.issuance_cpu += cpu_seconds(p.server.pid) - before
                    p.issuance_count += len(items)
                    p.figures.issuance_rates.append(rate)
                else:
                    rate = _rate(list(items), _ask, p.client, CLIENTS)  # type: ignore[arg-type]
                    p.ocsp_cpu += cpu_seconds(p.server.pid) - before
                    p.ocsp_count += len(items)
                    p.figures.ocsp_rates.append(rate)
    for p in prepared:
        f = p.figures
        f.issuance_per_s = statistics.median(f.issuance_rates)
        f.ocsp_per_s = statistics.median(f.ocsp_rates)
        f.issuance_cpu_ms = p.issuance_cpu / max(1, p.issuance_count) * 1000
        f.ocsp_cpu_ms = p.ocsp_cpu / max(1, p.ocsp_count) * 1000


def measure_rest(p: Prepared) -> None:
    """``cert list``, revocations and the CRL, memory: one home at a time."""
    figures, fleet_home = p.figures, p.fleet_home
    ca_id = fleet_home.ca_id
    assert p.server is not None
    command = [
        str(Path(sys.executable).parent / "fleetpki"),
        "--home",
        str(fleet_home.home),
        "cert",
        "list",
        "--expiring",
        "30d",
        "--output",
        "json",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    figures.cert_list_s = time.perf_counter() - started

    with p.client() as http:
        crl_url = f"/crl/{ca_id}.crl"
        # The CRL of the loaded records, once it lists them all: the first read
        # builds it (no CRL yet) or serves the stale one and builds in the background.
        current = http.get(crl_url, timeout=600).content
        while len(x509.load_der_x509_crl(current)) < p.revoked_count:
            time.sleep(0.2)
            current = http.get(crl_url, timeout=600).content

        def revoke(serials: list[str]) -> list[float]:
            latencies = []
            for serial in serials:
                began = time.perf_counter()
                answer = http.post(f"/v1/certificates/{serial}/revoke", json={"reason": 1})
                answer.raise_for_status()
                latencies.append((time.perf_counter() - began) * 1000)
            return sorted(latencies)

        # Certificates issued above, through the API: real ones, with a domain.
        idle = revoke(p.issued_serials[:25])
        figures.revoke_p50_ms, figures.revoke_p99_ms = _p50_p99(idle)

        ocsp_latencies: list[float] = []
        done = threading.Event()

        def probe() -> None:
            with p.client() as other:
                index = 0
                while not done.is_set():
                    began = time.perf_counter()
                    _ask(other, p.ocsp_bodies[index % len(p.ocsp_bodies)])
                    ocsp_latencies.append((time.perf_counter() - began) * 1000)
                    index += 1

        prober = threading.Thread(target=probe)
        prober.start()
        started = time.perf_counter()
        first = http.get(crl_url).content  # stale: served at once, the rebuild starts
        figures.crl_first_read_ms = (time.perf_counter() - started) * 1000
        during = revoke(p.issued_serials[25:50])  # while the CRL builds
        figures.revoke_building_p50_ms, figures.revoke_building_p99_ms = _p50_p99(during)
        while _crl_number(first) <= _crl_number(current):
            # Each poll downloads the whole CRL (45 MB at a million entries, no
            # conditional GET): every 50 ms, the server spent its time sending them.
            time.sleep(CRL_POLL_S)
            first = http.get(crl_url).content
        figures.crl_rebuild_s = time.perf_counter() - started
        done.set()
        prober.join()
        figures.ocsp_during_build_p99_ms = _p50_p99(sorted(ocsp_latencies))[1]
        figures.crl_entries = len(x509.load_der_x509_crl(first))
    figures.rss_mb = _status_kb(p.server.pid, "VmRSS")
    figures.hwm_mb = _status_kb(p.server.pid, "VmHWM")


@contextmanager
def _database(backend: str, folder: Path) -> Iterator[str | None]:
    if backend == "sqlite":
        yield None
        return
    from support.postgres import start_postgres

    server = start_postgres(folder / "postgres")
    try:
        yield server.create_database(f"scale_{os.getpid()}")
    finally:
        server.stop()


def run(
    backend: str, sizes: list[int], revoked_share: float, requests: int, rounds: int
) -> dict[int, Figures]:
    """Every size of one backend: loaded one after the other, then served at once."""
    with ExitStack() as stack:
        prepared: list[Prepared] = []
        for size in sizes:
            print(f"{backend}, {size:,} certificates:", flush=True)
            folder = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="fleetpki-scale-"))
            )
            url = stack.enter_context(_database(backend, folder))
            fleet_home = _home(folder, url)
            started = time.perf_counter()
            sample, revoked_count = bulk_load(fleet_home, size, revoked_share)
            load_s = time.perf_counter() - started
            item = prepare(fleet_home, sample, revoked_count, requests, rounds)
            item.figures.load_s = load_s
            prepared.append(item)
        for item in prepared:
            item.server = stack.enter_context(fleetpki_server(item.fleet_home))
        rate_rounds(prepared, requests, rounds)
        for size, item in zip(sizes, prepared, strict=True):
            measure_rest(item)
            print(f"  {backend} {size:,}: {item.figures}", flush=True)
        return {size: item.figures for size, item in zip(sizes, prepared, strict=True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,1000000", help="comma-separated")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated")
    parser.add_argument("--revoked-share", type=float, default=0.1)
    parser.add_argument(
        "--requests", type=int, default=240, help="per measured rate, over all rounds"
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="timed rounds per rate, alternating sizes"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[tuple[str, int], Figures] = {}
    for backend in args.backends.split(","):
        for size, figures in run(
            backend, sizes, args.revoked_share, args.requests, args.rounds
        ).items():
            results[backend, size] = figures
    rows = [
        ("bulk load, s", "load_s", "{:.1f}"),
        ("issuances/s (HTTPS, 4 clients), median round", "issuance_per_s", "{:.0f}"),
        ("issuances/s, rounds' range", "issuance_range", ""),
        ("server CPU per issuance, ms", "issuance_cpu_ms", "{:.2f}"),
        ("OCSP responses/s (HTTPS, 4 clients, nonces), median round", "ocsp_per_s", "{:.0f}"),
        ("OCSP responses/s, rounds' range", "ocsp_range", ""),
        ("server CPU per OCSP response, ms", "ocsp_cpu_ms", "{:.2f}"),
        ("`cert list --expiring 30d`, s (command)", "cert_list_s", "{:.2f}"),
        ("revocation p50 / p99, ms (HTTPS, 25)", "revoke", ""),
        ("revocation p50 / p99 while the CRL builds, ms (25)", "revoke_building", ""),
        ("CRL entries", "crl_entries", "{:,}"),
        ("first CRL read after revoking, ms (cached)", "crl_first_read_ms", "{:.0f}"),
        ("CRL rebuilt and served after, s", "crl_rebuild_s", "{:.1f}"),
        ("OCSP p99 while the CRL builds, ms", "ocsp_during_build_p99_ms", "{:.0f}"),
        ("server memory VmRSS / peak VmHWM, MB", "memory", ""),
    ]
    columns = list(results)
    print(
        f"\nrevoked share {args.revoked_share:.0%}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end"
    )
    print("| measure | " + " | ".join(f"{b} {s:,}" for b, s in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for title, attribute, form in rows:
        cells = []
        for key in columns:
            f = results[key]
            if attribute == "revoke":
                cells.append(f"{f.revoke_p50_ms:.1f} / {f.revoke_p99_ms:.1f}")
            elif attribute == "revoke_building":
                cells.append(f"{f.revoke_building_p50_ms:.1f} / {f.revoke_building_p99_ms:.1f}")
            elif attribute in ("issuance_range", "ocsp_range"):
                rates = f.issuance_rates if attribute == "issuance_range" else f.ocsp_rates
                cells.append(f"{min(rates):.0f}-{max(rates):.0f}")
            elif attribute == "memory":
                cells.append(f"{f.rss_mb:.0f} / {f.hwm_mb:.0f}")
            else:
                cells.append(form.format(getattr(f, attribute)))
        print(f"| {title} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
