"""PostgreSQL restarted during issuance: no certificate issued but unrecorded (issue 14 item 6).

Clients issue certificates over the API of a real ``fleetpki serve`` in a loop while the
test crashes its PostgreSQL server (``pg_ctl stop -m immediate``, a private cluster) and
starts it again, several times. Every answer is 201 with a certificate or 503
``database.unavailable``; afterwards every certificate a client received is in the
database with its audit entry, and every row there is a well-formed certificate of the
issuing CA whose serial is its row's. A row no client received can only come from a
commit the crash left in doubt (the server had committed, the answer was lost), so there
are at most as many of those as 503s.
"""

from __future__ import annotations

import ssl
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import make_csr
from support.mqtt_device import wait_until
from support.postgres import PostgresServer, start_postgres
from support.serve_process import PreparedHome, prepare_home, serve_process

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CLIENTS = 4
RESTARTS = 3


@dataclass
class _Tally:
    """What the clients saw, shared between their threads (each appends its own)."""

    received: dict[str, x509.Certificate] = field(default_factory=dict)
    issuers: set[bytes] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, outcome: str) -> int:
        with self.lock:
            return self.outcomes[outcome]


def _issue_loop(prepared: PreparedHome, domain: str, tally: _Tally, stop: threading.Event) -> None:
    context = ssl.create_default_context(cafile=str(prepared.ca_bundle))
    headers = {"Authorization": f"Bearer {prepared.admin_token}"}
    with httpx.Client(
        base_url=prepared.base_url, verify=context, headers=headers, timeout=60
    ) as http:
        while not stop.is_set():
            _, csr = make_csr(domain)
            try:
                response = http.post("/v1/certificates", json={"csr": csr.decode()})
            except httpx.TransportError as exc:  # the API itself never went away
                with tally.lock:
                    tally.unexpected.append(f"transport: {exc!r}")
                continue
            with tally.lock:
                if response.status_code == 201:
                    chain = x509.load_pem_x509_certificates(response.json()["chain_pem"].encode())
                    leaf = chain[0]
                    tally.issuers.add(chain[1].public_bytes(serialization.Encoding.DER))
                    serial = format(leaf.serial_number, "X")
                    assert response.json()["certificate"]["serial"] == serial
                    tally.received[serial] = leaf
                    tally.outcomes["issued"] += 1
                elif (
                    response.status_code == 503
                    and response.json().get("code") == "database.unavailable"
                ):
                    tally.outcomes["unavailable"] += 1
                else:
                    tally.unexpected.append(f"{response.status_code}: {response.text}")


def _rows(server: PostgresServer, database: str) -> dict[str, tuple[bytes, str | None]]:
    with psycopg.connect(server.dsn_for(database)) as connection:
        certificates = connection.execute(
            "SELECT serial_hex, der, subject_cn FROM certificates WHERE subject_cn LIKE 'issue-%'"
        ).fetchall()
        audited = {
            row[0]
            for row in connection.execute(
                "SELECT object_id FROM audit_log WHERE action = 'certificate.issue'"
            ).fetchall()
        }
    return {
        serial: (bytes(der), "audited" if serial in audited else None)
        for serial, der, _ in certificates
    }


def test_no_certificate_is_issued_unrecorded_across_restarts(
    tmp_path: Path, key_passphrase: None
) -> None:
    server = start_postgres(tmp_path / "pg")
    try:
        database = "issuance"
        prepared = prepare_home(tmp_path, server.create_database(database), [])
        tally = _Tally()
        stop = threading.Event()
        with serve_process(prepared):
            context = ssl.create_default_context(cafile=str(prepared.ca_bundle))
            headers = {"Authorization": f"Bearer {prepared.admin_token}"}
            with httpx.Client(base_url=prepared.base_url, verify=context, headers=headers) as http:
                for index in range(CLIENTS):
                    registered = http.post("/v1/domains", json={"name": f"issue-{index}"})
                    assert registered.status_code == 201, registered.text
            threads = [
                threading.Thread(
                    target=_issue_loop, args=(prepared, f"issue-{i}", tally, stop), daemon=True
                )
                for i in range(CLIENTS)
            ]
            for thread in threads:
                thread.start()
            try:
                for _ in range(RESTARTS):
                    issued = tally.count("issued")
                    wait_until(lambda n=issued: tally.count("issued") >= n + 20, "issuances")
                    server.halt(mode="immediate")
                    refused = tally.count("unavailable")
                    wait_until(lambda n=refused: tally.count("unavailable") > n, "a 503")
                    server.resume()
                issued = tally.count("issued")
                wait_until(lambda n=issued: tally.count("issued") >= n + 20, "issuance again")
            finally:
                stop.set()
                for thread in threads:
                    thread.join(60)
        assert tally.unexpected == []
        rows = _rows(server, database)
    finally:
        server.stop()

    (issuer_der,) = tally.issuers  # one issuing CA signed every answer
    issuer = x509.load_der_x509_certificate(issuer_der)
    received = set(tally.received)
    # Every certificate a client got is recorded, with its audit entry.
    assert received - set(rows) == set()
    assert all(rows[serial][1] == "audited" for serial in received)
    # Every row is a certificate of the issuing CA, its serial the row's; a received one
    # is byte for byte what its client got.
    for serial, (der, _) in rows.items():
        certificate = x509.load_der_x509_certificate(der)
        assert format(certificate.serial_number, "X") == serial
        certificate.verify_directly_issued_by(issuer)
        if serial in tally.received:
            assert tally.received[serial].public_bytes(serialization.Encoding.DER) == der
    in_doubt = set(rows) - received
    assert len(in_doubt) <= tally.count("unavailable")
    assert tally.count("issued") == len(received) >= (RESTARTS + 1) * 20
