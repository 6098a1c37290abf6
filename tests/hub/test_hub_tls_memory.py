"""What the hub frees of a TLS handshake once the CONNECT has read the peer's certificates.

`fleetpki.hub.tls.release_handshake_memory` empties the chain OpenSSL keeps of the
handshake and the memory BIOs' buffers, for idle memory per connection. The
connection must go on as before: the leaf still readable, telemetry acknowledged,
pings answered, and a revocation still closing the session.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from fleetpki.application import FleetPKI
from fleetpki.hub.protocol import Connect, encode, encode_publish
from fleetpki.hub.server import HubConnection
from fleetpki.hub.tls import peer_certificates
from support.hub import DeviceFiles, LiveHub, issue_device, start_hub_thread

WAIT = 20.0


@pytest.fixture
def hub(sqlite_fleet: FleetPKI) -> Iterator[LiveHub]:
    with start_hub_thread(sqlite_fleet) as live:
        yield live


@pytest.fixture
def dev1(sqlite_fleet: FleetPKI, hub: LiveHub, tmp_path: Path) -> DeviceFiles:
    hub.registry.add_device("dev1")
    return issue_device(sqlite_fleet, "dev1", tmp_path / "certs")


def _recv(tls: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = tls.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _connect(hub: LiveHub, files: DeviceFiles, context: ssl.SSLContext) -> ssl.SSLSocket:
    context.load_cert_chain(files.cert, files.key)
    raw = socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT)
    tls = context.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(encode(Connect("dev1", True, 60, "localhost/dev1/?api-version=2019-10-01")))
    assert _recv(tls, 4) == b"\x20\x02\x00\x00"  # CONNACK 0
    return tls


def _server_side(hub: LiveHub) -> tuple[bytes | None, list[bytes]]:
    """What the hub's connection of dev1 can still read of the peer's certificates."""

    def read() -> tuple[bytes | None, list[bytes]]:
        link = hub.broker._live["dev1"]
        assert isinstance(link, HubConnection)
        assert link._transport is not None
        return peer_certificates(link._transport.get_extra_info("ssl_object"))

    return hub.call(read)


def _still_serves(hub: LiveHub, tls: ssl.SSLSocket) -> None:
    tls.sendall(encode_publish("devices/dev1/messages/events/", b"t=21", 1, False, False, 7))
    assert _recv(tls, 4) == b"\x40\x02\x00\x07"  # PUBACK 7, after the message was stored
    assert [r.body for r in hub.registry.telemetry] == [b"t=21"]
    tls.sendall(b"\xc0\x00")  # PINGREQ
    assert _recv(tls, 2) == b"\xd0\x00"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_chain_is_freed_after_the_connect_and_the_session_goes_on(
    hub: LiveHub, dev1: DeviceFiles, version: ssl.TLSVersion
) -> None:
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    context.minimum_version = context.maximum_version = version
    with _connect(hub, dev1, context) as tls:
        leaf, others = _server_side(hub)
        # The device sent its issuing CA too (support.hub.issue_device): freed; the leaf stays.
        assert leaf == dev1.certificate.public_bytes(serialization.Encoding.DER)
        assert others == []
        _still_serves(hub, tls)
        hub.registry.revoke(dev1.certificate)
        tls.settimeout(WAIT)
        assert _recv(tls, 1) == b""  # closed by the revocation
    deadline = time.monotonic() + WAIT
    while hub.broker.is_connected("dev1"):
        assert time.monotonic() < deadline, "the session did not close"
        time.sleep(0.01)


def test_a_tls12_session_the_cache_may_resume_keeps_its_chain(
    hub: LiveHub, dev1: DeviceFiles
) -> None:
    # No session ticket: the server keeps the session under its id, for a resumption
    # that reads the chain again.
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_TICKET
    with _connect(hub, dev1, context) as tls:
        leaf, others = _server_side(hub)
        assert leaf == dev1.certificate.public_bytes(serialization.Encoding.DER)
        assert len(others) == 1  # the issuing CA the device sent
        _still_serves(hub, tls)
