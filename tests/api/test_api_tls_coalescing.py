"""The API's transport wrapper: what one response writes in one turn of the loop leaves
as one write (headers and body in one TLS record), over a real socket pair."""

from __future__ import annotations

import asyncio
import socket

from fleetpki.api.tls import _COALESCE_LIMIT, _CoalescingTransport


class _Quiet(asyncio.Protocol):
    pass


async def _pair() -> tuple[_CoalescingTransport, socket.socket]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(_Quiet, ours)
    assert isinstance(transport, asyncio.Transport)
    return _CoalescingTransport(transport, loop), peer


def _received(peer: socket.socket) -> bytes:
    try:
        return peer.recv(1 << 20)
    except BlockingIOError:
        return b""


def test_writes_in_one_turn_leave_together_when_the_loop_turns() -> None:
    async def run() -> None:
        transport, peer = await _pair()
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
        transport.write(b"body")
        assert _received(peer) == b""  # held until the loop's next callbacks
        await asyncio.sleep(0)
        assert _received(peer) == b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"
        transport.write(b"next")
        await asyncio.sleep(0)
        assert _received(peer) == b"next"
        transport.close()
        peer.close()

    asyncio.run(run())


def test_close_sends_what_waits_and_abort_drops_it() -> None:
    async def run() -> None:
        transport, peer = await _pair()
        transport.write(b"last words")
        transport.close()
        await asyncio.sleep(0.01)
        assert _received(peer) == b"last words"
        peer.close()
        aborted, other = await _pair()
        aborted.write(b"never sent")
        aborted.abort()
        await asyncio.sleep(0.01)
        assert _received(other) == b""
        assert aborted.is_closing()
        other.close()

    asyncio.run(run())


def test_more_than_the_limit_is_sent_at_once() -> None:
    async def run() -> None:
        transport, peer = await _pair()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * _COALESCE_LIMIT)
        transport.write(b"x" * (_COALESCE_LIMIT + 1))
        received = b""
        while True:  # without a turn of the loop: the bytes left already
            chunk = _received(peer)
            if not chunk:
                break
            received += chunk
        assert received.startswith(b"x")
        assert transport.get_extra_info("socket") is not None  # the rest is the real one's
        transport.close()
        peer.close()

    asyncio.run(run())
