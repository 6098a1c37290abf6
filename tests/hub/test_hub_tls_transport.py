"""The hub's own TLS layer on the MQTT port (`fleetpki.hub.tls_transport.TLSConnection`).

Each connection runs TLS on its own memory BIOs rather than uvloop's SSL protocol.
What uvloop's layer did must still hold: packets that arrive with the client's last
handshake flight are read, a failed handshake is counted by the listener and does not
disturb other devices, and the hub's close sends close_notify.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetpki.application import FleetPKI
from fleetpki.hub.protocol import Connect, encode
from fleetpki.hub.server import HubConnection
from fleetpki.hub.tls_transport import TLSConnection
from support.hub import DeviceFiles, LiveHub, issue_device, start_hub_thread
from support.mqtt_device import connect_once

WAIT = 20.0
CONNECT = encode(Connect("dev1", True, 60, "localhost/dev1/?api-version=2019-10-01"))


@pytest.fixture
def hub(sqlite_fleet: FleetPKI) -> Iterator[LiveHub]:
    with start_hub_thread(sqlite_fleet) as live:
        yield live


@pytest.fixture
def dev1(sqlite_fleet: FleetPKI, hub: LiveHub, tmp_path: Path) -> DeviceFiles:
    hub.registry.add_device("dev1")
    return issue_device(sqlite_fleet, "dev1", tmp_path / "certs")


def _client_context(hub: LiveHub, files: DeviceFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(files.cert, files.key)
    return context


def _read_plain(
    sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, size: int
) -> bytes:
    data = b""
    while len(data) < size:
        try:
            data += tls.read(size - len(data))
            continue
        except ssl.SSLWantReadError:
            pass
        chunk = sock.recv(65536)
        if not chunk:
            break
        incoming.write(chunk)
    return data


def test_a_connect_sent_with_the_last_handshake_flight_is_answered(
    hub: LiveHub, dev1: DeviceFiles
) -> None:
    # TLS 1.3: the client's Finished and its CONNECT leave in one segment, so the
    # server's handshake ends with the CONNECT's record already received.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = _client_context(hub, dev1).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(CONNECT)
        sock.sendall(outgoing.read())  # Finished and CONNECT together
        assert _read_plain(sock, tls, incoming, 4) == b"\x20\x02\x00\x00"  # CONNACK 0

        def transport() -> object:
            link = hub.broker._live["dev1"]
            assert isinstance(link, HubConnection)
            return link._transport

        assert isinstance(hub.call(transport), TLSConnection)


def test_a_failed_handshake_is_counted_and_other_devices_are_served(
    hub: LiveHub, dev1: DeviceFiles
) -> None:
    listener = hub.server.listener
    assert listener is not None
    before = listener.failed_handshakes
    with socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT) as sock:
        sock.sendall(CONNECT)  # MQTT without TLS: not a ClientHello
        data = sock.recv(65536)
        while data and data[:1] == b"\x15":  # the TLS alert, then the close
            data = sock.recv(65536)
        assert data == b""
    deadline = time.monotonic() + WAIT
    while listener.failed_handshakes == before:
        assert time.monotonic() < deadline, "the failed handshake was not counted"
        time.sleep(0.01)
    assert listener.failed_handshakes == before + 1
    assert connect_once(hub.port, hub.ca_file, dev1) == 0


def test_the_hub_closes_with_close_notify(hub: LiveHub, dev1: DeviceFiles) -> None:
    context = _client_context(hub, dev1)
    raw = socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT)
    # Without close_notify, a socket that does not suppress ragged EOFs raises SSLEOFError.
    with context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as tls:
        tls.sendall(CONNECT)
        assert tls.recv(4) == b"\x20\x02\x00\x00"
        hub.registry.revoke(dev1.certificate)
        assert tls.recv(1) == b""  # close_notify: a clean end of the stream
