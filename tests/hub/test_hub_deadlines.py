"""The broker's one deadline sweep times out idle connections (no timer per connection).

`fleetpki.hub.deadlines.ConnectionDeadlines` looks at every open connection's MQTT
deadline once a second: a device that stays silent past 1.5 x its keepalive is closed,
one that pings in time is not, and a closed connection leaves the sweep.
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


def _connect(hub: LiveHub, files: DeviceFiles, keepalive: int) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    context.load_cert_chain(files.cert, files.key)
    raw = socket.create_connection(("127.0.0.1", hub.port), timeout=WAIT)
    tls = context.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(encode(Connect("dev1", True, keepalive, "localhost/dev1/?api-version=2019-10-01")))
    assert tls.recv(4) == b"\x20\x02\x00\x00"  # CONNACK 0
    return tls


def _watched(hub: LiveHub) -> tuple[bool, int]:
    def read() -> tuple[bool, int]:
        link = hub.broker._live.get("dev1")
        return isinstance(link, HubConnection) and link in hub.broker.deadlines, len(
            hub.broker.deadlines
        )

    return hub.call(read)


def test_a_silent_device_is_closed_after_its_keepalive(hub: LiveHub, dev1: DeviceFiles) -> None:
    with _connect(hub, dev1, keepalive=1) as tls:
        assert _watched(hub) == (True, 1)
        tls.settimeout(WAIT)
        assert tls.recv(1) == b""  # closed by the sweep, 1.5 s after the CONNECT
    deadline = time.monotonic() + WAIT
    while hub.broker.is_connected("dev1") or _watched(hub)[1]:
        assert time.monotonic() < deadline, "the timed-out connection was not forgotten"
        time.sleep(0.01)


def test_a_device_that_pings_in_time_stays(hub: LiveHub, dev1: DeviceFiles) -> None:
    with _connect(hub, dev1, keepalive=4) as tls:
        tls.settimeout(WAIT)
        for _ in range(6):  # 9 s, past the first deadline (6 s), each ping moving it on
            time.sleep(1.5)
            tls.sendall(b"\xc0\x00")  # PINGREQ
            assert tls.recv(2) == b"\xd0\x00"
        assert hub.broker.is_connected("dev1")
        assert _watched(hub) == (True, 1)
