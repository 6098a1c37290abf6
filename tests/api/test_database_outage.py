"""The database goes away under a running ``fleetpki serve``, and comes back (issue 14 item 6).

Each test runs the real server in its own process on loopback, with a paho-mqtt device
connected over TLS with its certificate, then takes the database away:

* PostgreSQL: a private cluster (not the session's, so other tests are unaffected) is
  stopped with ``pg_ctl stop -m fast`` and started again on the same port;
* SQLite: another process holds the database's write lock (``BEGIN EXCLUSIVE``, as the
  ``sqlite3`` shell in an open transaction does) past ``sqlite_busy_timeout_seconds``.

Meanwhile the API answers 503 with the stable code ``database.unavailable`` (in Azure's
format on the Azure routes) and changes nothing, a new device CONNECT gets CONNACK 3
(server unavailable, which the SDKs retry), and the connected device keeps its session:
its keepalive pings are answered, its QoS 1 telemetry is held unacknowledged. Once the
database is back, both recover without a restart: the held message is stored and
PUBACKed on the same connection, the API answers again, the refused device connects,
and revoking the live device's certificate closes its session (the outbox consumer runs).
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import make_csr
from fleetpki.application import FleetPKI
from fleetpki.services.hub_sas import make_sas_token
from fleetpki.settings import Settings
from support.mqtt_device import WAIT, Device, wait_until
from support.postgres import start_postgres
from support.serve_process import PreparedHome, prepare_home, serve_environment, serve_process

pytestmark = pytest.mark.slow

API_VERSION = {"api-version": "2021-04-12"}
TOPIC = "devices/{}/messages/events/"
# paho pings every KEEPALIVE seconds and drops the connection when a PINGRESP is missing.
KEEPALIVE = 2
FLEETPKI = [sys.executable, "-m", "fleetpki"]
KEY_COMPROMISE = ["--reason", "keyCompromise"]

LOCKER = textwrap.dedent(
    """
    import sqlite3, sys
    connection = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    connection.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()
    connection.execute("ROLLBACK")
    """
)


def _client(prepared: PreparedHome) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(prepared.ca_bundle))
    return httpx.Client(
        base_url=prepared.base_url,
        verify=context,
        timeout=WAIT * 2,
        headers={"Authorization": f"Bearer {prepared.admin_token}"},
    )


def _register_domain(http: httpx.Client, name: str) -> httpx.Response:
    return http.post("/v1/domains", json={"name": name})


def _stored_bodies(http: httpx.Client, device_id: str) -> list[str]:
    response = http.get("/v1/hub/messages", params={"device": device_id})
    assert response.status_code == 200, response.text
    return [m["body"] for m in response.json()]


def _sas(prepared: PreparedHome) -> str:
    # A service SAS token of the hub's iothubowner policy, as the Azure service SDK makes
    # one from its connection string; the key is read from the home before serve starts.

    fleet = FleetPKI.open(Settings.load(prepared.home))
    try:
        key = fleet.hub_sas.policy_keys("iothubowner").primary
    finally:
        fleet.close()
    host = f"localhost:{prepared.api_port}"
    return make_sas_token(host, "iothubowner", key, int(time.time()) + 3600)


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "database.unavailable"
    assert response.json().get("request_id")


class _Session:
    """A connected paho device counting its CONNACKs and disconnections."""

    def __init__(self, prepared: PreparedHome, device_id: str) -> None:
        self.device = Device(prepared.mqtt_port, prepared.ca_bundle, prepared.devices[device_id])
        self.topic = TOPIC.format(device_id)

    def publish(self, body: str) -> Any:
        return self.device.client.publish(self.topic, body.encode(), qos=1)

    @property
    def reconnected(self) -> bool:
        return not self.device.connack.empty()


@contextmanager
def _connected(prepared: PreparedHome, device_id: str) -> Iterator[_Session]:
    session = _Session(prepared, device_id)
    try:
        assert session.device.connect(keepalive=KEEPALIVE) == 0
        yield session
    finally:
        session.device.close()


def _outage_and_recovery(
    prepared: PreparedHome,
    *,
    take_away: Callable[[], None],
    bring_back: Callable[[], None],
    reads_fail: bool,
) -> None:
    """The scenario both backends share; ``reads_fail`` is False where SQLite's WAL reads on."""
    sas = _sas(prepared)
    with serve_process(prepared), _client(prepared) as http, _connected(prepared, "live") as live:
        first = live.publish("before")
        first.wait_for_publish(WAIT)
        assert _stored_bodies(http, "live") == ["before"]
        assert _register_domain(http, "before-outage").status_code == 201

        take_away()
        try:
            # A write: refused with the stable code, nothing registered.
            _assert_unavailable(_register_domain(http, "during-outage"))
            _, csr = make_csr("before-outage")
            _assert_unavailable(http.post("/v1/certificates", json={"csr": csr.decode()}))
            if reads_fail:
                _assert_unavailable(http.get("/v1/certificates"))
                azure = http.get(
                    "/devices/live", params=API_VERSION, headers={"Authorization": sas}
                )
                assert azure.status_code == 503, azure.text
                assert azure.headers["iothub-errorcode"] == "ServiceUnavailable"
                assert "database.unavailable" in azure.json()["Message"]
                # A new CONNECT cannot be authenticated: CONNACK 3, which the SDKs retry.
                refused = Device(
                    prepared.mqtt_port, prepared.ca_bundle, prepared.devices["newcomer"]
                )
                try:
                    assert refused.connect() == 3
                finally:
                    refused.close()
            else:
                # SQLite's write-ahead log lets reads go on beside the lock holder: lists,
                # and a device's CONNECT (its authentication only reads).
                listed = http.get("/v1/certificates", params={"domain": "before-outage"})
                assert listed.status_code == 200, listed.text
                reader = Device(
                    prepared.mqtt_port, prepared.ca_bundle, prepared.devices["newcomer"]
                )
                try:
                    assert reader.connect() == 0
                finally:
                    reader.close()
            # The live session's telemetry waits for the database, unacknowledged.
            held = live.publish("during")
            # Several keepalive periods pass with the database away: paho would close the
            # connection on a missing PINGRESP, so the hub must go on answering pings.
            time.sleep(3 * KEEPALIVE)
            assert not held.is_published()
            assert not live.device.disconnected.is_set()
        finally:
            bring_back()

        # Both recover by themselves: no restart, no reconnect.
        held.wait_for_publish(WAIT)
        assert not live.device.disconnected.is_set() and not live.reconnected
        assert _stored_bodies(http, "live") == ["before", "during"]
        registered = _register_domain(http, "after-outage")
        assert registered.status_code == 201, registered.text
        names = {d["name"] for d in http.get("/v1/domains").json()}
        assert {"before-outage", "after-outage"} <= names
        assert "during-outage" not in names
        issued = http.get("/v1/certificates", params={"domain": "before-outage"}).json()
        assert issued == []
        newcomer = Device(prepared.mqtt_port, prepared.ca_bundle, prepared.devices["newcomer"])
        try:
            assert newcomer.connect() == 0
        finally:
            newcomer.close()
        # The revocation path works again, from another process too (the CLI: the hub
        # learns of it through its outbox consumer, woken by LISTEN/NOTIFY on PostgreSQL,
        # whose connection the outage broke, or its poll on SQLite): the session closes.
        serial = format(prepared.devices["live"].certificate.serial_number, "X")
        revoked = subprocess.run(
            [*FLEETPKI, "--home", str(prepared.home), "cert", "revoke", serial, *KEY_COMPROMISE],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=serve_environment(),
        )
        assert revoked.returncode == 0, revoked.stderr
        assert live.device.disconnected.wait(WAIT)
    log = prepared.log_path.read_text()
    assert "Traceback" not in log, log


@pytest.mark.postgres
def test_postgresql_stopped_then_started_under_serve(tmp_path: Path, key_passphrase: None) -> None:
    server = start_postgres(tmp_path / "pg")  # private: halting it touches no other test
    try:
        prepared = prepare_home(tmp_path, server.url, ["live", "newcomer"])
        _outage_and_recovery(
            prepared, take_away=server.halt, bring_back=server.resume, reads_fail=True
        )
    finally:
        server.stop()


def test_sqlite_locked_by_another_process_under_serve(tmp_path: Path, key_passphrase: None) -> None:
    prepared = prepare_home(tmp_path, None, ["live", "newcomer"], sqlite_busy_timeout_seconds=0.5)
    database = prepared.home / "fleetpki.db"
    locker: list[subprocess.Popen[str]] = []

    def lock() -> None:
        process = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(database)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        locker.append(process)
        assert process.stdout is not None and process.stdout.readline() == "locked\n"

    def unlock() -> None:
        for process in locker:
            assert process.stdin is not None
            process.stdin.write("\n")
            process.stdin.close()
            process.wait(WAIT)
            assert process.stdout is not None
            process.stdout.close()
        assert [p.returncode for p in locker] == [0]

    _outage_and_recovery(prepared, take_away=lock, bring_back=unlock, reads_fail=False)


@pytest.mark.postgres
def test_the_503_changes_nothing_and_names_no_internals(
    tmp_path: Path, key_passphrase: None
) -> None:
    # The answer while the database is away says what to do, not what failed inside.
    server = start_postgres(tmp_path / "pg")
    try:
        prepared = prepare_home(tmp_path, server.url, [])
        with serve_process(prepared), _client(prepared) as http:
            server.halt()
            try:
                response = _register_domain(http, "nothing")
            finally:
                server.resume()
            _assert_unavailable(response)
            body = response.text
            for internal in ("psycopg", "OperationalError", "5432", str(server.port), "sqlalchemy"):
                assert internal not in body
            assert response.headers["content-type"].startswith("application/problem+json")
            wait_until(
                lambda: http.get("/v1/domains").status_code == 200, "the API to answer again"
            )
            assert http.get("/v1/domains", params={"name": "nothing"}).json() == []
        log = prepared.log_path.read_text()
        # One log entry for the 503, carrying the request id the caller got.
        assert log.count(response.json()["request_id"]) == 1, log
    finally:
        server.stop()
