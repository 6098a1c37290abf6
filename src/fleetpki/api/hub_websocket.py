"""MQTT over WebSockets at ``/$iothub/websocket`` on the HTTPS port (reference §1.2).

The Azure device SDK with ``websockets=True`` opens TLS to the HTTPS port, sends
``GET /$iothub/websocket`` with ``Sec-WebSocket-Protocol: mqtt`` and then speaks
MQTT in binary frames.  This route accepts with the ``mqtt`` subprotocol and hands
the byte stream to the same broker as the MQTT/TLS listener, through a connection
object that behaves like the TCP one: the broker authenticates the device by its
TLS client certificate exactly as on port 8883 (CONNACK 5 on any failure).  Frames
may split or join MQTT packets arbitrarily; the codec's reader takes partial input.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from fleetpki.api.tls import CLIENT_CERT_STATE_KEY

__all__ = ["WEBSOCKET_PATH", "router"]

router = APIRouter(tags=["hub"])

WEBSOCKET_PATH = "/$iothub/websocket"
# Policy violation (RFC 6455 §7.4.1): used when no hub runs behind this API.
_NO_HUB_CLOSE_CODE = 1008


class _WebSocketTransport:
    """The slice of ``asyncio.Transport`` the hub connection uses, over a WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closing = False
        self._readable = asyncio.Event()
        self._readable.set()
        self._sender = asyncio.create_task(self._send_loop())

    async def _send_loop(self) -> None:
        while (data := await self._outgoing.get()) is not None:
            try:
                await self._websocket.send_bytes(data)
            except (WebSocketDisconnect, RuntimeError, OSError):
                break
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await self._websocket.close()

    def write(self, data: bytes) -> None:
        if not self._closing:
            self._outgoing.put_nowait(bytes(data))

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._outgoing.put_nowait(None)
            self._readable.set()

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        self._readable.clear()

    def resume_reading(self) -> None:
        self._readable.set()

    async def wait_readable(self) -> None:
        await self._readable.wait()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    async def finished(self) -> None:
        self.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender


def _connection_class() -> type[Any]:
    from fleetpki.hub.server import HubConnection

    class WebSocketHubConnection(HubConnection):
        """A hub connection whose client certificate comes from the HTTPS layer."""

        def __init__(
            self, broker: Any, loop: asyncio.AbstractEventLoop, leaf: bytes | None
        ) -> None:
            super().__init__(broker, loop)
            self._leaf = leaf

        def peer_certificates(self) -> tuple[bytes | None, list[bytes]]:
            # The broker completes the chain from the hub's trusted CAs.
            return self._leaf, []

    return WebSocketHubConnection


@router.websocket(WEBSOCKET_PATH)
async def iothub_websocket(websocket: WebSocket) -> None:
    """Bridge one WebSocket to the hub's broker (binary frames carry MQTT)."""
    broker = getattr(websocket.app.state, "hub_broker", None)
    if broker is None:
        await websocket.close(code=_NO_HUB_CLOSE_CODE, reason="no hub runs on this server")
        return
    await websocket.accept(subprotocol="mqtt")
    leaf = (websocket.scope.get("state") or {}).get(CLIENT_CERT_STATE_KEY)
    loop = asyncio.get_running_loop()
    connection = _connection_class()(broker, loop, leaf if isinstance(leaf, bytes) else None)
    transport = _WebSocketTransport(websocket)
    connection.connection_made(transport)
    try:
        while not transport.is_closing():
            await transport.wait_readable()
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None and message.get("text") is not None:
                data = message["text"].encode()
            if data:
                connection.data_received(data)
    except WebSocketDisconnect:
        pass
    finally:
        connection.connection_lost(None)
        await transport.finished()
