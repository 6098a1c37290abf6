"""Connection exhaustion on the MQTT port (issue 14 item 3), on loopback, bounded.

Half-open TLS handshakes are closed once the handshake timeout (1 s here) has passed,
a first packet that is not CONNECT closes the connection on its first byte (not after
the 30 s connect timeout), a real device is served meanwhile, and past the connection
cap new connections are closed at once with a log line naming the setting. The waits
are bounds, never timing assertions.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetpki.application import FleetPKI, init_home
from fleetpki.services.authority import HierarchySpec
from fleetpki.settings import Settings
from support.hub import LiveHub, issue_device, start_hub_thread
from support.mqtt_device import connect_once

pytestmark = pytest.mark.slow

WAIT = 20.0
# Well under the 30 s connect timeout: a prompt close is seen within this bound.
PROMPT = 10.0
HALF_OPEN = 150
NOT_CONNECT = 100


def _fleet(tmp_path: Path, **changes: object) -> FleetPKI:
    settings = Settings.default_for(tmp_path / "home").with_changes(**changes)
    return init_home(settings, HierarchySpec()).app


@pytest.fixture
def hub(tmp_path: Path, key_passphrase: None) -> Iterator[LiveHub]:
    fleet = _fleet(tmp_path, tls_handshake_timeout_seconds=1)
    try:
        with start_hub_thread(fleet) as live:
            yield live
    finally:
        fleet.close()


async def _closed(reader: asyncio.StreamReader, bound: float) -> bool:
    try:
        while await asyncio.wait_for(reader.read(4096), bound):
            pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        pass
    return True


async def _slow_clients(hub: LiveHub, first_bytes: bytes) -> list[bool]:
    context = ssl.create_default_context(cafile=str(hub.ca_file))
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    for _ in range(HALF_OPEN):  # TCP only: the TLS handshake never starts
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        connections.append((reader, writer, WAIT))
    for _ in range(NOT_CONNECT):  # TLS, then the first byte of another packet
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", hub.port, ssl=context, server_hostname="localhost"
        )
        writer.write(first_bytes)
        await writer.drain()
        connections.append((reader, writer, PROMPT))
    closed = await asyncio.gather(*(_closed(r, bound) for r, _, bound in connections))
    for _, writer, _ in connections:
        writer.close()
    return list(closed)


@pytest.mark.parametrize(
    "first_bytes",
    [b"\x30", b"\xc0", b"\x82\x05"],
    ids=["publish-header", "pingreq-header", "subscribe-partial"],
)
def test_slow_and_wrong_clients_are_closed_while_a_device_is_served(
    hub: LiveHub, tmp_path: Path, first_bytes: bytes
) -> None:
    hub.registry.add_device("dev1")
    files = issue_device(hub.backend.fleet, "dev1", tmp_path / "certs")
    results: list[list[bool]] = []

    async def both() -> int:
        slow = asyncio.create_task(_slow_clients(hub, first_bytes))
        await asyncio.sleep(0)  # the slow clients connect first
        code = await asyncio.to_thread(connect_once, hub.port, hub.ca_file, files)
        results.append(await slow)
        return code

    assert asyncio.run(both()) == 0  # CONNACK accepted while the slow ones were open
    closed = results[0]
    assert closed[:HALF_OPEN].count(False) == 0, "half-open handshakes stayed open"
    assert closed[HALF_OPEN:].count(False) == 0, "non-CONNECT first packets stayed open"
    assert connect_once(hub.port, hub.ca_file, files) == 0


@pytest.fixture
def capped(tmp_path: Path, key_passphrase: None) -> Iterator[LiveHub]:
    fleet = _fleet(tmp_path, mqtt_max_connections=40, tls_handshake_timeout_seconds=30)
    try:
        with start_hub_thread(fleet) as live:
            yield live
    finally:
        fleet.close()


async def _over_the_cap(hub: LiveHub) -> int:
    connections = [await asyncio.open_connection("127.0.0.1", hub.port) for _ in range(50)]

    async def refused(reader: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(1), 5) == b""
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    closed = await asyncio.gather(*(refused(r) for r, _ in connections))
    for _, writer in connections:
        writer.close()
    return sum(closed)


def test_connections_past_the_cap_are_closed_with_a_log_line(
    capped: LiveHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fleetpki.listener"):
        refused = asyncio.run(_over_the_cap(capped))
    assert refused == 10
    assert capped.server.listener is not None
    assert capped.server.listener.refused == 10
    lines = [r.getMessage() for r in caplog.records if r.name == "fleetpki.listener"]
    assert any("MQTT port" in m and "mqtt_max_connections = 40" in m for m in lines), lines
    capped.registry.add_device("dev1")
    files = issue_device(capped.backend.fleet, "dev1", tmp_path / "certs")
    assert connect_once(capped.port, capped.ca_file, files) == 0
