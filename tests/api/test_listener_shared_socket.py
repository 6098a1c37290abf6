"""A guarded listener on a socket that other processes accept on too (``serve
--workers``): a burst of new connections spreads over the listeners instead of going
all to the first one, with real sockets (two listeners in one loop stand in for two
processes: the one that accepts first would otherwise drain the whole backlog)."""

from __future__ import annotations

import asyncio
import socket

from fleetpki.listener import GuardedListener, listening_socket

BURST = 8


class _Quiet(asyncio.Protocol):
    pass


async def _burst(shared: bool) -> list[int]:
    sock = listening_socket("127.0.0.1", 0, option="--port", fallback=0)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    # The whole burst waits in the backlog before anyone accepts.
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(BURST)]
    listeners = [
        GuardedListener(f"L{i}", sock, _Quiet, None, max_connections=100, shared=shared)
        for i in range(2)
    ]
    for listener in listeners:
        listener.start()
    try:
        for _ in range(200):
            if sum(listener.open_connections for listener in listeners) == BURST:
                break
            await asyncio.sleep(0.01)
        return [listener.open_connections for listener in listeners]
    finally:
        for listener in listeners:
            listener.close()
            listener.close_connections()
        for client in clients:
            client.close()
        sock.close()


def test_a_shared_socket_spreads_a_burst_over_its_listeners() -> None:
    counts = asyncio.run(_burst(shared=True))
    assert sum(counts) == BURST
    assert min(counts) >= BURST // 2 - 1, counts


def test_an_unshared_listener_takes_the_whole_backlog_at_once() -> None:
    # What the shared mode is for: without it the first listener takes everything.
    counts = asyncio.run(_burst(shared=False))
    assert sorted(counts) == [0, BURST], counts
