"""A running server's own TLS certificate follows a renewed issuing CA, without a restart.

After ``ca renew --rekey`` the servers still present a certificate of the old
generation, which keeps that generation from retiring. The refresh (every minute in
``fleetpki serve``, on demand here) reissues it from the new generation and loads it
into the live API and MQTT contexts: new handshakes on both ports get the new
certificate, the API port accepts client certificates of the new generation, and the
old generation drains and retires.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import make_csr
from fleetpki.api.background import ServerThread, free_port
from fleetpki.api.tls import server_ssl_context
from fleetpki.api.tls_refresher import TLSRefresher
from fleetpki.application import FleetPKI, init_home
from fleetpki.services import Actor
from fleetpki.services.ca_lifecycle import RenewCommand
from fleetpki.services.certificates import IssueCommand
from fleetpki.settings import Settings
from support.hub_control import issuing_ca

pytestmark = pytest.mark.slow

ADMIN = Actor.local_admin()


@pytest.fixture
def served(tmp_path: Path, key_passphrase: None) -> Iterator[tuple[FleetPKI, ServerThread]]:
    api_port, mqtt_port = free_port(), free_port()
    settings = Settings.default_for(tmp_path / "home").with_changes(
        public_url=f"https://127.0.0.1:{api_port}", api_port=api_port, mqtt_port=mqtt_port
    )
    fleet = init_home(settings).app
    server = ServerThread(fleet)
    server.start()
    try:
        yield fleet, server
    finally:
        server.stop()
        fleet.close()


def _presented(port: int, ca_bundle: Path) -> x509.Certificate:
    context = ssl.create_default_context(cafile=str(ca_bundle))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _health_with_client_certificate(
    port: int, ca_bundle: Path, certfile: Path, keyfile: Path
) -> bytes:
    context = ssl.create_default_context(cafile=str(ca_bundle))
    context.load_cert_chain(certfile, keyfile)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return tls.recv(64)


def _wait_active(fleet: FleetPKI, ca_id: str) -> None:
    deadline = time.monotonic() + 10
    while fleet.ca_lifecycle.generations(ca_id)[-1].state != "active":
        assert time.monotonic() < deadline, "the new generation never became active"
        time.sleep(0.02)


def test_the_servers_certificate_moves_to_the_new_generation_and_the_old_one_retires(
    served: tuple[FleetPKI, ServerThread], tmp_path: Path
) -> None:
    fleet, server = served
    assert server.prepared is not None
    bundle = server.prepared.tls.ca_bundle
    api_port, mqtt_port = fleet.settings.api_port, fleet.settings.mqtt_port
    ca = issuing_ca(fleet)
    old_ca = ca.certificate
    before = {port: _presented(port, bundle) for port in (api_port, mqtt_port)}
    for cert in before.values():
        cert.verify_directly_issued_by(old_ca)
    assert server.refresh_tls() is False  # nothing due: the same certificate stays

    new_generation = fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(rekey=True))
    _wait_active(fleet, ca.id)
    new_ca = x509.load_der_x509_certificate(new_generation.certificate_der)
    # A device certificate of the new generation, to present on the API port.
    key, csr = make_csr("refresh-device")
    fleet.domains.register(
        ADMIN, ca_id=ca.id, template_id=None, name="refresh-device",
        owners=[ADMIN.principal_id], requesters=[ADMIN.principal_id],
    )  # fmt: skip
    leaf = fleet.certificates.issue(ADMIN, IssueCommand(ca_id=ca.id, csr=csr)).issued.certificate
    leaf.verify_directly_issued_by(new_ca)
    certfile, keyfile = tmp_path / "device.pem", tmp_path / "device-key.pem"
    certfile.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # The API port does not know the new generation yet: it refuses the certificate.
    # (TLS 1.3: the alert arrives after the client's handshake, so the read gets nothing.)
    try:
        refused = _health_with_client_certificate(api_port, bundle, certfile, keyfile)
    except (ssl.SSLError, ConnectionResetError):
        refused = b""
    assert refused == b""
    # Still the old certificate, so the old generation has something outstanding.
    assert _presented(api_port, bundle) == before[api_port]
    assert fleet.ca_lifecycle.retire_drained() == []

    assert server.refresh_tls() is True
    after = {port: _presented(port, bundle) for port in (api_port, mqtt_port)}
    for port, cert in after.items():
        assert cert != before[port]
        cert.verify_directly_issued_by(new_ca)
    assert after[api_port] == after[mqtt_port]
    # The API port now verifies client certificates of the new generation.
    assert _health_with_client_certificate(api_port, bundle, certfile, keyfile).startswith(
        b"HTTP/1.1 200"
    )
    # The old server certificate was renewed away: the old generation retires.
    assert [(g.number, g.state) for g in fleet.ca_lifecycle.retire_drained()] == [(1, "retired")]
    assert server.refresh_tls() is False


def _presented_by(context: ssl.SSLContext, ca_bundle: Path) -> x509.Certificate:
    """The certificate a server with ``context`` presents, over an in-memory handshake."""
    client_context = ssl.create_default_context(cafile=str(ca_bundle))
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = context.wrap_bio(to_server, from_server, server_side=True)
    client = client_context.wrap_bio(to_client, from_client, server_hostname="localhost")
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        der = client.getpeercert(binary_form=True) if client.version() else None
        if der:
            return x509.load_der_x509_certificate(der)
    raise AssertionError("no handshake")


def test_a_worker_that_does_not_issue_loads_the_certificate_the_primary_renewed(
    served: tuple[FleetPKI, ServerThread],
) -> None:
    # serve --workers: only the primary (the ServerThread here) issues; another worker
    # follows the home's files.
    fleet, server = served
    assert server.prepared is not None
    bundle = server.prepared.tls.ca_bundle
    files = fleet.server_certificates.files()
    context = server_ssl_context(files.certfile, files.keyfile, files.client_ca_file)
    follower = TLSRefresher(
        fleet.server_certificates, hostname="localhost", host="127.0.0.1", issues=False
    )
    follower.add(context, verifies_clients=True)
    before = _presented_by(context, bundle)
    assert asyncio.run(follower.refresh()) is False

    ca = issuing_ca(fleet)
    new_generation = fleet.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand(rekey=True))
    _wait_active(fleet, ca.id)
    # The follower never issues: due or not, its certificate stays until the primary's.
    assert asyncio.run(follower.refresh()) is False
    assert _presented_by(context, bundle) == before
    assert server.refresh_tls() is True
    assert asyncio.run(follower.refresh()) is True
    after = _presented_by(context, bundle)
    assert after != before
    after.verify_directly_issued_by(x509.load_der_x509_certificate(new_generation.certificate_der))
    assert after == _presented(fleet.settings.api_port, bundle)
