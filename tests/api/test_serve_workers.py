"""``fleetpki serve --workers 2``: concurrent issuance over several processes on one port.

The real command runs in a subprocess on SQLite and on PostgreSQL; many clients issue
at once over HTTPS. Every answer is a new certificate with its own serial, each one is
recorded with its audit entry, both workers served some of them; concurrent twin patches
through both workers lose no write; the workers' hub nodes take C2D and relayed methods;
a revocation reaches every worker's OCSP cache; the AMQP port is served (by the primary alone: two binding it would fail the start) and
the portal by every worker; and SIGTERM stops the supervisor and its workers cleanly (each hub node leaves
``hub_nodes``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from sqlalchemy import select

from conftest import ALICE, make_csr
from fleetpki.application import FleetPKI, init_home
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import hub_sas
from fleetpki.services.authority import HierarchySpec
from fleetpki.services.certificates import IssueCommand
from fleetpki.services.context import Actor
from fleetpki.services.hub_devices import DeviceSpec
from fleetpki.settings import Settings
from fleetpki.store.hub_models import HubNode
from fleetpki.store.models import AuditEntry, CertificateRecord
from support.database import raw_session
from support.hub import issue_device, trust_issuing_ca
from support.mqtt_device import Device, wait_until

pytestmark = pytest.mark.slow

CLIENTS = 6
EACH = 15
START_TIMEOUT = 120.0


@dataclass
class Workers:
    """A running ``fleetpki serve --workers 2`` and what the clients need."""

    process: subprocess.Popen[str]
    base_url: str
    ca_bundle: Path
    token: str
    fleet: FleetPKI
    log: Path
    mqtt_port: int
    amqp_port: int

    @property
    def tls(self) -> ssl.SSLContext:
        """A client context trusting the server's CA."""
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def worker_pids(self) -> list[int]:
        """The supervisor's children: the worker processes."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _cpu_ticks(pid: int) -> int:
    # utime + stime (proc(5) fields 14 and 15), after the command name in parentheses.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@pytest.fixture
def workers(tmp_path: Path, database_url: str, key_passphrase: None) -> Iterator[Workers]:
    port, mqtt_port, amqp_port = _free_port(), _free_port(), _free_port()
    base_url = f"https://127.0.0.1:{port}"
    # AMQP on a port of its own, not 5671: tests run in parallel.
    settings = Settings.default_for(tmp_path / "home", database_url).with_changes(
        public_url=base_url, api_port=port, mqtt_port=mqtt_port, amqp_port=amqp_port
    )
    fleet = init_home(settings, HierarchySpec()).app
    trust_issuing_ca(fleet)
    admin = Actor.local_admin()
    fleet.principals.add(admin, ALICE, "alice")
    token = fleet.principals.create_token(admin, ALICE).secret
    log = tmp_path / "serve.log"
    env = {**os.environ, "FLEETPKI_HOME": str(settings.home)}
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "fleetpki", "serve", "--workers", "2"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    bundle = settings.home / "tls" / "ca-bundle.pem"
    running = Workers(process, base_url, bundle, token, fleet, log, mqtt_port, amqp_port)
    try:
        _wait_until_served(running)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        fleet.close()


def _wait_until_served(running: Workers) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert running.process.poll() is None, running.log.read_text()
        try:
            answer = httpx.get(
                f"{running.base_url}/v1/cas",
                headers={"Authorization": f"Bearer {running.token}"},
                verify=running.tls,
                timeout=5,
            )
            # Every worker is ready once the supervisor says so.
            serving = "2 worker processes serving" in running.log.read_text()
            if answer.status_code == 200 and serving and len(running.worker_pids()) == 2:
                with raw_session(running.fleet) as session:
                    nodes = set(session.scalars(select(HubNode.name)))
                if nodes == {"builtin", "builtin-w1"}:
                    return
        except (httpx.HTTPError, OSError):
            pass
        assert time.monotonic() < deadline, running.log.read_text()
        time.sleep(0.2)


def _register_domains(running: Workers, names: list[str]) -> None:
    with httpx.Client(
        base_url=running.base_url,
        verify=running.tls,
        headers={"Authorization": f"Bearer {running.token}"},
    ) as client:
        for name in names:
            answer = client.post(
                "/v1/domains",
                json={"name": name, "owners": [{"id": ALICE}], "requesters": [{"id": ALICE}]},
            )
            assert answer.status_code == 201, answer.text


def _issue(running: Workers, domain: str, count: int) -> list[tuple[int, str]]:
    """``count`` issuances for ``domain``, each on a new connection (any worker may take it)."""
    answers = []
    for _ in range(count):
        _, csr = make_csr(domain)
        answer = httpx.post(
            f"{running.base_url}/v1/certificates",
            json={"csr": csr.decode(), "domain": domain, "validity_days": 7},
            headers={"Authorization": f"Bearer {running.token}"},
            verify=running.tls,
            timeout=60,
        )
        if answer.status_code != 201:
            answers.append((answer.status_code, answer.text))
            continue
        leaf = x509.load_pem_x509_certificates(answer.json()["chain_pem"].encode())[0]
        assert format(leaf.serial_number, "x") == answer.json()["certificate"]["serial"].lower()
        answers.append((201, answer.json()["certificate"]["serial"].upper()))
    return answers


def test_concurrent_issuance_over_two_workers_loses_and_repeats_nothing(
    workers: Workers,
) -> None:
    domains = [f"workers-{n}" for n in range(CLIENTS)]
    _register_domains(workers, domains)
    pids = workers.worker_pids()
    before = {pid: _cpu_ticks(pid) for pid in pids}
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [
            a
            for part in pool.map(_issue, [workers] * CLIENTS, domains, [EACH] * CLIENTS)
            for a in part
        ]
    refused = [r for r in results if r[0] != 201]
    assert not refused, refused
    serials = [serial for _, serial in results]
    assert len(serials) == CLIENTS * EACH
    assert len(set(serials)) == len(serials), "a serial was issued twice"
    with raw_session(workers.fleet) as session:
        stored = list(
            session.scalars(
                select(CertificateRecord.serial_hex).where(
                    CertificateRecord.subject_cn.in_(domains)
                )
            )
        )
        audited = list(
            session.scalars(
                select(AuditEntry.object_id).where(AuditEntry.action == "certificate.issue")
            )
        )
    assert sorted(s.upper() for s in stored) == sorted(serials)
    # Once each (the server's own TLS certificate is audited too, and left out here).
    issued = set(serials)
    assert sorted(s.upper() for s in audited if s.upper() in issued) == sorted(serials)
    # Both workers took connections: each spent CPU on them.
    assert all(_cpu_ticks(pid) > before[pid] for pid in pids), (before, pids)


def test_amqp_is_served_once_and_the_portal_by_every_worker(workers: Workers) -> None:
    # Both workers started, so only one bound the AMQP port; it completes a TLS handshake.
    with (
        socket.create_connection(("127.0.0.1", workers.amqp_port), timeout=10) as raw,
        workers.tls.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() is not None
    # The portal's sign-in page, on new connections that either worker may take. The
    # workers accept on one socket: sequential connections may all go to whichever
    # worker waits first, and a few pages may cost a worker less than one CPU tick, so
    # the pages are fetched eight at a time until each worker has used CPU (a bound of
    # 50 rounds, not a timing assertion).
    pids = workers.worker_pids()
    before = {pid: _cpu_ticks(pid) for pid in pids}

    def page(_: int) -> None:
        answer = httpx.get(
            f"{workers.base_url}/", verify=workers.tls, timeout=30, follow_redirects=True
        )
        assert answer.status_code == 200, answer.text
        assert "text/html" in answer.headers["content-type"]

    with ThreadPoolExecutor(8) as pool:
        for _ in range(50):
            list(pool.map(page, range(8)))
            if all(_cpu_ticks(pid) > before[pid] for pid in pids):
                break
    assert all(_cpu_ticks(pid) > before[pid] for pid in pids), (before, pids)


def test_sigterm_stops_every_worker_cleanly(workers: Workers) -> None:
    pids = workers.worker_pids()
    workers.process.send_signal(signal.SIGTERM)
    assert workers.process.wait(60) == 0, workers.log.read_text()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    # Each worker's hub node left on its way out (the graceful stop ran).
    with raw_session(workers.fleet) as session:
        assert list(session.scalars(select(HubNode.name))) == []
    assert "Traceback" not in workers.log.read_text()


def test_the_workers_hub_nodes_take_methods_and_c2d_made_in_another_process(
    workers: Workers, tmp_path: Path
) -> None:
    # The device holds its session on the primary's MQTT port; this process, without a
    # hub of its own, relays the method through the database (each worker is a node).
    workers.fleet.hub_devices.put(DeviceSpec("worker-dev"))
    device = Device(
        workers.mqtt_port, workers.ca_bundle, issue_device(workers.fleet, "worker-dev", tmp_path)
    )
    assert device.connect() == 0
    try:
        device.subscribe("devices/worker-dev/messages/devicebound/#")
        workers.fleet.hub_messages.enqueue_c2d("worker-dev", b"to the primary", message_id="w1")
        assert device.next_message().payload == b"to the primary"
        wait_until(lambda: not workers.fleet.hub_messages.pending_c2d("worker-dev"), "the delivery")
        device.answer_methods(lambda name, body: (200, {"name": name, "body": body}))
        result = asyncio.run(
            workers.fleet.hub_methods.invoke("worker-dev", "ping", {"n": 1}, timeout=20)
        )
        assert result.as_json() == {"status": 200, "payload": {"name": "ping", "body": {"n": 1}}}
    finally:
        device.close()


def _patch_desired(running: Workers, token: str, client: int, count: int) -> list[int]:
    statuses = []
    for n in range(count):
        answer = httpx.patch(
            f"https://localhost:{running.base_url.rsplit(':', 1)[1]}/twins/shared-twin",
            params={"api-version": "2021-04-12"},
            json={"properties": {"desired": {f"c{client}n{n}": n}}},
            headers={"Authorization": token},
            verify=running.tls,
            timeout=60,
        )
        statuses.append(answer.status_code)
    return statuses


def test_concurrent_twin_patches_over_two_workers_lose_no_write(workers: Workers) -> None:
    # A desired patch reads the twin, merges and writes it back: two processes doing so
    # at once must not overwrite each other's keys, nor reuse a $version.
    workers.fleet.hub_devices.put(DeviceSpec("shared-twin"))
    port = workers.base_url.rsplit(":", 1)[1]
    key = workers.fleet.hub_sas.policy_keys("iothubowner").primary
    token = hub_sas.make_sas_token(f"localhost:{port}", "iothubowner", key, int(time.time()) + 600)
    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = [
            status
            for part in pool.map(
                _patch_desired,
                [workers] * CLIENTS,
                [token] * CLIENTS,
                range(CLIENTS),
                [5] * CLIENTS,
            )
            for status in part
        ]
    assert statuses == [200] * (CLIENTS * 5)
    twin = workers.fleet.hub_twins.get("shared-twin")
    assert {k for k in twin.desired if not k.startswith("$")} == {
        f"c{c}n{n}" for c in range(CLIENTS) for n in range(5)
    }
    assert twin.desired_version == 1 + CLIENTS * 5


def test_a_worker_that_dies_is_started_again(workers: Workers) -> None:
    primary, other = workers.worker_pids()
    os.kill(other, signal.SIGKILL)
    wait_until(
        lambda: len(pids := workers.worker_pids()) == 2 and other not in pids,
        "the supervisor to start the worker again",
    )
    assert workers.worker_pids()[0] == primary
    _wait_until_served(workers)  # both hub nodes beat again and the API answers
    assert "worker 1 (pid" in workers.log.read_text()


def _ocsp_statuses(running: Workers, request: bytes, count: int) -> set[ocsp.OCSPCertStatus]:
    """The statuses of ``count`` answers, each on a new connection (either worker's)."""
    statuses = set()
    for _ in range(count):
        answer = httpx.post(
            f"{running.base_url}/ocsp",
            content=request,
            headers={"Content-Type": "application/ocsp-request"},
            verify=running.tls,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        statuses.add(ocsp.load_der_ocsp_response(answer.content).certificate_status)
    return statuses


def test_a_revocation_reaches_the_ocsp_cache_of_every_worker(workers: Workers) -> None:
    # Each worker keeps its own cache of signed answers; a revocation committed by another
    # process (here the test's) must drop the answer in all of them.
    actor = Actor(ALICE)
    issuing = next(c for c in workers.fleet.cas.list() if c.tier == "issuing")
    workers.fleet.domains.register(
        actor,
        ca_id=issuing.id,
        template_id=None,
        name="ocsp-dev",
        owners=[ALICE],
        requesters=[ALICE],
    )
    issued = workers.fleet.certificates.issue(
        actor, IssueCommand(ca_id=issuing.id, csr=make_csr("ocsp-dev")[1])
    )
    issuer = x509.load_der_x509_certificate(issuing.certificate_der)
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(issued.certificate.certificate, issuer, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    pids = workers.worker_pids()
    before = {pid: _cpu_ticks(pid) for pid in pids}
    assert _ocsp_statuses(workers, request, 20) == {ocsp.OCSPCertStatus.GOOD}
    assert all(_cpu_ticks(pid) > before[pid] for pid in pids), (before, pids)
    workers.fleet.certificates.revoke(
        actor, issued.certificate.serial_hex, RevocationReason.KEY_COMPROMISE
    )
    revoked = {ocsp.OCSPCertStatus.REVOKED}
    if workers.fleet.store.dialect == "sqlite":
        # Each worker sees the commit in the WAL index at its next request.
        assert _ocsp_statuses(workers, request, 20) == revoked
    else:
        # Each worker's LISTEN hears the commit's NOTIFY a moment after it.
        wait_until(lambda: _ocsp_statuses(workers, request, 20) == revoked, "every worker's NOTIFY")
        assert _ocsp_statuses(workers, request, 20) == revoked
