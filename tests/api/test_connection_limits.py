"""Connection exhaustion on the HTTPS port (issue 14 item 3), on loopback, bounded.

A few hundred slow clients — TCP connections that never start TLS, and TLS
connections that never end their request headers — are closed once the TLS handshake
timeout or the header timeout (1 s here) has passed, while a good client is served
meanwhile. Past the connection cap new connections are closed at once, with a log line
naming the setting. The waits are bounds (``WAIT``), never timing assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.server import LiveServer, start_server

pytestmark = pytest.mark.slow

WAIT = 20.0
SLOW_TLS = 150  # finish the handshake, then send half a request
SLOW_TCP = 150  # connect, then never send a ClientHello


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    with start_server(
        tmp_path / "home", tls_handshake_timeout_seconds=1, http_header_timeout_seconds=1
    ) as server:
        yield server


def _context(live: LiveServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=live.ca_bundle)


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection within the bound."""
    try:
        while await asyncio.wait_for(reader.read(4096), WAIT):
            pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        pass
    return True


async def _good_request(live: LiveServer) -> int:
    async with httpx.AsyncClient(verify=_context(live), timeout=WAIT) as client:
        answer = await client.get(f"https://localhost:{live.port}/healthz")
        return answer.status_code


async def _slow_clients_then_a_good_one(live: LiveServer) -> tuple[list[bool], int]:
    context = _context(live)
    writers: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []
    for _ in range(SLOW_TCP):
        reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
        readers.append(reader)
        writers.append(writer)
    for _ in range(SLOW_TLS):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", live.port, ssl=context, server_hostname="localhost"
        )
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        await writer.drain()
        readers.append(reader)
        writers.append(writer)
    # All of them are open now; a good client is served meanwhile.
    status = await _good_request(live)
    closed = await asyncio.gather(*(_closed(r) for r in readers))
    for writer in writers:
        writer.close()
    return list(closed), status


def test_slow_clients_are_closed_while_a_good_client_is_served(live: LiveServer) -> None:
    closed, status = asyncio.run(_slow_clients_then_a_good_one(live))
    assert status == 200
    assert closed.count(False) == 0, f"{closed.count(False)} of {len(closed)} stayed open"
    # And the port serves as before.
    assert asyncio.run(_good_request(live)) == 200


async def _idle_then_a_good_one(live: LiveServer) -> tuple[int, int]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", live.port, ssl=_context(live), server_hostname="localhost"
    )
    # Keep-alive between requests is uvicorn's own (5 s), bounded like the headers.
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")  # never ended
    await writer.drain()
    assert await _closed(reader)
    writer.close()
    return int(first.split()[1]), await _good_request(live)


def test_a_second_request_that_never_ends_its_headers_is_closed(live: LiveServer) -> None:
    assert asyncio.run(_idle_then_a_good_one(live)) == (200, 200)


async def _busy_keep_alive(live: LiveServer) -> list[int]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", live.port, ssl=_context(live), server_hostname="localhost"
    )
    statuses = []
    # Eight requests 0.4 s apart on one connection: 3 s, three header timeouts. Each
    # response moves the deadline on; a connection that keeps asking stays open.
    for _ in range(8):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await asyncio.wait_for(reader.readexactly(length), WAIT)
        statuses.append(int(head.split()[1]))
        await asyncio.sleep(0.4)
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()
    return statuses


def test_a_connection_that_keeps_asking_outlives_the_header_timeout(live: LiveServer) -> None:
    assert asyncio.run(_busy_keep_alive(live)) == [200] * 8


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[LiveServer]:
    with start_server(
        tmp_path / "home", api_max_connections=50, tls_handshake_timeout_seconds=30
    ) as server:
        yield server


async def _over_the_cap(live: LiveServer) -> int:
    readers: list[asyncio.StreamReader] = []
    writers: list[asyncio.StreamWriter] = []
    for _ in range(60):
        reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
        readers.append(reader)
        writers.append(writer)

    async def refused(reader: asyncio.StreamReader) -> bool:
        # Within the bound, well before the 30 s handshake timeout.
        try:
            return await asyncio.wait_for(reader.read(1), 5) == b""
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    closed = await asyncio.gather(*(refused(r) for r in readers))
    for writer in writers:
        writer.close()
    return sum(closed)


def test_connections_past_the_cap_are_closed_with_a_log_line(
    capped: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fleetpki.listener"):
        refused = asyncio.run(_over_the_cap(capped))
    assert refused == 10
    lines = [r.getMessage() for r in caplog.records if r.name == "fleetpki.listener"]
    assert any("connection limit reached" in m and "api_max_connections = 50" in m for m in lines)
    # Once the idle connections are gone, the port serves again.
    assert asyncio.run(_good_request(capped)) == 200
