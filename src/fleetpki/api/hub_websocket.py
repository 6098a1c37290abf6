"""MQTT over WebSockets at ``/$iothub/websocket`` on the HTTPS port (reference §1.2).

The Azure device SDK with ``websockets=True`` opens TLS to the HTTPS port, sends
``GET /$iothub/websocket`` with ``Sec-WebSocket-Protocol: mqtt`` and then speaks
MQTT in binary frames.  This route accepts with the ``mqtt`` subprotocol and hands
the byte stream to the same broker as the MQTT/TLS listener (``app.state.hub_broker``,
set by `fleetpki.api.server.run_servers` when the hub runs; without it the upgrade is
answered 503), through a `WebSocketHubConnection`: the listener's `HubConnection`
over a WebSocket transport.  The broker therefore authenticates the device by its TLS
client certificate exactly as on port 8883 (CONNACK 5 on any failure).

Frames may split or join MQTT packets arbitrarily: the codec's reader takes partial
input, and outgoing packets written in one turn of the loop share a frame.  A text
frame closes the connection (MQTT 3.1.1 §6.0).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from fleetpki.api.problems import PROBLEM_CONTENT_TYPE, problem_body
from fleetpki.api.tls import CLIENT_CERT_STATE_KEY, CLIENT_CHAIN_STATE_KEY
from fleetpki.hub.broker import Broker
from fleetpki.hub.server import HubConnection

__all__ = ["WEBSOCKET_PATH", "WebSocketHubConnection", "router"]

router = APIRouter(tags=["hub"])

WEBSOCKET_PATH = "/$iothub/websocket"
#: The WebSocket subprotocol of MQTT (MQTT 3.1.1 §6.0).
SUBPROTOCOL = "mqtt"
#: Unsent bytes above which the connection stops reading its client, and below which
#: it reads again (the listener's transport does the same through pause_writing).
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
#: "Unsupported data" (RFC 6455 §7.4.1): the close code for a text frame.
_UNSUPPORTED_DATA = 1003


class _WebSocketTransport:
    """The slice of ``asyncio.Transport`` that `HubConnection` uses, over a WebSocket.

    Writes are queued and sent by one task, so the broker's synchronous ``write``
    never blocks; what is queued when the task wakes goes out as one binary frame.
    """

    def __init__(self, websocket: WebSocket, protocol: HubConnection) -> None:
        self._websocket = websocket
        self._protocol = protocol
        self._outgoing: list[bytes] = []
        self._pending = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._writing_paused = False
        self._readable = asyncio.Event()
        self._readable.set()
        self._sender = asyncio.create_task(self._send_loop())

    async def _send_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._outgoing:
                    data = b"".join(self._outgoing)
                    self._outgoing.clear()
                    await self._websocket.send_bytes(data)
                    self._pending -= len(data)
                    if self._writing_paused and self._pending <= _LOW_WATER:
                        self._writing_paused = False
                        self._protocol.resume_writing()
                if self._closing and not self._outgoing:
                    break
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._closing = True
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self._websocket.close()

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the client (dropped once closing)."""
        if self._closing or not data:
            return
        self._outgoing.append(bytes(data))
        self._pending += len(data)
        self._wake.set()
        if not self._writing_paused and self._pending > _HIGH_WATER:
            self._writing_paused = True
            self._protocol.pause_writing()

    def close(self) -> None:
        """Send what is queued, then close the WebSocket."""
        if not self._closing:
            self._closing = True
            self._wake.set()
            self._readable.set()

    def is_closing(self) -> bool:
        """Whether `close` was called or the client went away."""
        return self._closing

    def pause_reading(self) -> None:
        """Stop taking frames from the client."""
        self._readable.clear()

    def resume_reading(self) -> None:
        """Take frames again."""
        self._readable.set()

    async def wait_readable(self) -> None:
        """Return once reading is not paused."""
        await self._readable.wait()

    async def finished(self) -> None:
        """Close, and wait until the queued bytes and the close frame are sent."""
        self.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender


class WebSocketHubConnection(HubConnection):
    """A hub connection whose client certificates come from the HTTPS layer."""

    __slots__ = ("_chain", "_leaf")

    def __init__(
        self,
        broker: Broker,
        loop: asyncio.AbstractEventLoop,
        leaf: bytes | None,
        chain: tuple[bytes, ...] = (),
    ) -> None:
        super().__init__(broker, loop)
        self._leaf = leaf
        self._chain = chain

    def peer_certificates(self) -> tuple[bytes | None, list[bytes]]:
        """The leaf and the other certificates the client sent over TLS, as DER.

        When the chain is empty the broker completes it from the hub's trusted CAs.
        """
        if self._leaf is None:
            return None, []
        return self._leaf, list(self._chain)


def _client_certificates(websocket: WebSocket) -> tuple[bytes | None, tuple[bytes, ...]]:
    state: dict[str, Any] = websocket.scope.get("state") or {}
    leaf = state.get(CLIENT_CERT_STATE_KEY)
    chain = state.get(CLIENT_CHAIN_STATE_KEY) or ()
    if not isinstance(leaf, bytes):
        return None, ()
    return leaf, tuple(der for der in chain if isinstance(der, bytes))


async def _refuse_no_hub(websocket: WebSocket) -> None:
    # uvicorn's websockets-sansio protocol then logs a spurious "returned without
    # completing handshake" although the 503 went out (Kludex/uvicorn#3138).
    body = problem_body(503, "hub.not_running", "no hub runs on this server")
    response = JSONResponse(body, status_code=503, media_type=PROBLEM_CONTENT_TYPE)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:  # the server lacks the denial-response extension: HTTP 403
        await websocket.close(code=1008, reason="no hub runs on this server")


@router.websocket(WEBSOCKET_PATH)
async def iothub_websocket(websocket: WebSocket) -> None:
    """Bridge one WebSocket to the hub's broker (binary frames carry MQTT)."""
    broker = getattr(websocket.app.state, "hub_broker", None)
    if not isinstance(broker, Broker):
        await _refuse_no_hub(websocket)
        return
    # RFC 6455 §4.2.2: only a subprotocol that the client offered may be selected.
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    leaf, chain = _client_certificates(websocket)
    connection = WebSocketHubConnection(broker, asyncio.get_running_loop(), leaf, chain)
    transport = _WebSocketTransport(websocket, connection)
    connection.connection_made(transport)  # type: ignore[arg-type]
    try:
        while not transport.is_closing():
            await transport.wait_readable()
            if transport.is_closing():
                break
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None:  # a text frame: MQTT travels in binary frames only
                with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                    await websocket.close(code=_UNSUPPORTED_DATA)
                break
            if data:
                connection.data_received(data)
    except WebSocketDisconnect:
        pass
    finally:
        connection.connection_lost(None)
        await transport.finished()
