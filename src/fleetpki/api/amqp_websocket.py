"""AMQP over WebSockets at ``/$servicebus/websocket`` on the HTTPS port (port 443 on Azure).

The service SDK with ``transport_type=TransportType.AmqpOverWebsocket`` (uamqp's
``WSIO``) opens TLS to port 443, upgrades ``GET /$servicebus/websocket/`` with the
subprotocol ``AMQPWSB10`` (the OASIS "AMQP WebSocket Binding" 1.0) and then speaks the
same AMQP as on port 5671 in binary frames. This route accepts with that subprotocol
and runs the AMQP listener's own connection (`fleetpki.hub.amqp.server.AmqpConnection`:
the same engine, SASL gate, claims and nodes) over the WebSocket; without a running
AMQP listener the upgrade is answered 503.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from fleetpki.api.problems import PROBLEM_CONTENT_TYPE, problem_body
from fleetpki.hub.amqp.server import AmqpConnection

__all__ = ["AMQP_WEBSOCKET_PATH", "router"]

router = APIRouter(tags=["hub"])

AMQP_WEBSOCKET_PATH = "/$servicebus/websocket"
#: The subprotocol of the AMQP WebSocket Binding (OASIS amqp-wsb 1.0 §2.1).
SUBPROTOCOL = "AMQPWSB10"


class _WebSocketTransport:
    """The slice of ``asyncio.Transport`` that `AmqpConnection` uses, over a WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._outgoing: list[bytes] = []
        self._wake = asyncio.Event()
        self.closing = False
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
                if self.closing and not self._outgoing:
                    break
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.closing = True
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self._websocket.close()

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the client (dropped once closing)."""
        if not self.closing and data:
            self._outgoing.append(bytes(data))
            self._wake.set()

    def close(self) -> None:
        """Send what is queued, then close the WebSocket."""
        self.closing = True
        self._wake.set()

    def is_closing(self) -> bool:
        """Whether `close` was called or the client went away."""
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``peername`` is the WebSocket client's address."""
        client = self._websocket.client
        if name == "peername" and client is not None:
            return (client.host, client.port)
        return default

    async def finished(self) -> None:
        """Close, and wait until the queued bytes and the close frame are sent."""
        self.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender


async def _refuse_no_hub(websocket: WebSocket) -> None:
    body = problem_body(503, "hub.not_running", "no AMQP listener runs on this server")
    response = JSONResponse(body, status_code=503, media_type=PROBLEM_CONTENT_TYPE)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:  # the server lacks the denial-response extension
        await websocket.close(code=1008, reason="no AMQP listener runs on this server")


@router.websocket(AMQP_WEBSOCKET_PATH)
@router.websocket(AMQP_WEBSOCKET_PATH + "/")
async def amqp_websocket(websocket: WebSocket) -> None:
    """Run one AMQP connection over a WebSocket (binary frames carry AMQP)."""
    hub = getattr(websocket.app.state, "hub_server", None)
    services = getattr(hub, "amqp_services", None)
    if services is None:
        await _refuse_no_hub(websocket)
        return
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    loop = asyncio.get_running_loop()
    transport = _WebSocketTransport(websocket)
    connection = AmqpConnection(services, loop, lambda _connection: None)
    connection.connection_made(transport)  # type: ignore[arg-type]
    try:
        while not transport.closing:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None:  # a text frame: not AMQP (amqp-wsb §2.2 binary only)
                break
            connection.data_received(data)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        connection.connection_lost(None)
        await transport.finished()
