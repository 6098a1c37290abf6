"""The hub's AMQP 1.0 listener over TLS (port 5671): the thin asyncio layer.

Each accepted connection gets an `AmqpEngine` (Proton, sans-I/O) and an `AmqpPeer`
(what the client may do); this module only moves bytes between the socket and the
engine and runs the engine's timers. TLS is the hub's own context, the one its MQTT
port serves, so a renewed server certificate reaches this port too
(`fleetpki.api.tls_refresher`). Connections are accepted through the same
`fleetpki.listener.GuardedListener` as the other ports: a cap on open connections and
a TLS handshake timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import Callable
from typing import cast

from fleetpki.hub.amqp.engine import AmqpEngine
from fleetpki.hub.amqp.peer import AmqpPeer, AmqpServices
from fleetpki.listener import GuardedListener, listening_socket
from fleetpki.settings import AZURE_AMQP_PORT

__all__ = ["DEFAULT_AMQP_PORT", "AmqpConnection", "AmqpServer"]

_log = logging.getLogger("fleetpki.hub.amqp")

#: Where the Azure service SDKs dial AMQP over TLS (ref §0).
DEFAULT_AMQP_PORT = AZURE_AMQP_PORT


class AmqpConnection(asyncio.Protocol):
    """One client connection: bytes to the engine and back, the engine's timers."""

    def __init__(
        self,
        services: AmqpServices,
        loop: asyncio.AbstractEventLoop,
        forget: Callable[[AmqpConnection], None],
    ) -> None:
        self._services = services
        self._loop = loop
        self._forget = forget
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.peer: AmqpPeer | None = None
        self.engine: AmqpEngine | None = None
        self._flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the engine for a new connection."""
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        name = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else "peer"
        self.peer = AmqpPeer(self._services, self._loop, self.flush, name)
        self.engine = AmqpEngine(self.peer, container_id=f"fleetpki-{uuid.uuid4()}")
        self._tick()

    def data_received(self, data: bytes) -> None:
        """Feed the engine and write its answer."""
        if self.engine is not None:
            self.engine.receive(data)
            self._write_now()

    def eof_received(self) -> bool | None:
        """The client closed its side: let the engine finish."""
        if self.engine is not None:
            self.engine.receive_eof()
            self._write_now()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.peer is not None:
            self.peer.closed()
        self._transport = None
        self._forget(self)

    def flush(self) -> None:
        """Write what the engine has to say, soon (once per turn of the loop).

        Deferred, because the handler asks for it from inside the engine's own event
        dispatch (a send that changes credit raises another flow event).
        """
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._write_now)

    def _write_now(self) -> None:
        """Write what the engine has to say; close the socket once it is done."""
        self._flush_scheduled = False
        if self.engine is None or self._transport is None:
            return
        data = self.engine.output()
        if data:
            self._transport.write(data)
        if self.engine.closed:
            if self.engine.error is not None:
                _log.info("hub: AMQP connection closed: %s", self.engine.error)
            self._transport.close()

    def close(self) -> None:
        """Close the connection now (the hub stops)."""
        if self.engine is not None and self._transport is not None:
            self.engine.close("amqp:connection:forced", "the hub is stopping")
            self._write_now()
        if self._transport is not None:
            self._transport.close()

    def _tick(self) -> None:
        self._timer = None
        if self.engine is None or self._transport is None:
            return
        deadline = self.engine.tick(time.time())
        self._write_now()
        if self._transport is not None:
            delay = max(0.05, deadline - time.time()) if deadline else 5.0
            self._timer = self._loop.call_later(delay, self._tick)


class AmqpServer:
    """The AMQP/TLS listener.

    Args:
        services: what the clients reach.
        ssl_context: the hub's TLS context (``None``: plain TCP, protocol tests only).
        max_connections: open connections allowed at once.
        handshake_timeout: seconds a TLS handshake may take.
    """

    def __init__(
        self,
        services: AmqpServices,
        ssl_context: ssl.SSLContext | None,
        *,
        max_connections: int,
        handshake_timeout: float,
    ) -> None:
        self.services = services
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self._listener: GuardedListener | None = None
        self._connections: set[AmqpConnection] = set()

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        assert self._listener is not None, "the AMQP listener is not started"
        return self._listener.port

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting connections in the running loop.

        Raises:
            ConflictError: ``serve.port_in_use``.
            ValidationError: ``serve.privileged_port``, ``serve.cannot_bind``.
        """
        loop = asyncio.get_running_loop()
        sock = listening_socket(host, port, option="--amqp-port", fallback=DEFAULT_AMQP_PORT)
        sock.setblocking(False)

        def connection() -> AmqpConnection:
            made = AmqpConnection(self.services, loop, self._connections.discard)
            self._connections.add(made)
            return made

        self._listener = GuardedListener(
            "AMQP",
            sock,
            connection,
            self.ssl_context,
            max_connections=self.max_connections,
            handshake_timeout=self.handshake_timeout,
            setting="mqtt_max_connections",
        ).start()

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        listener = self._listener
        if listener is None:
            return
        listener.close()
        for connection in list(self._connections):
            connection.close()
        self._connections.clear()
        listener.close_connections()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listener.wait_closed(), 5)
        listener.sock.close()
        self._listener = None


def amqp_services(fleet: object, executor: concurrent.futures.Executor) -> AmqpServices:
    """The services of ``fleet`` that AMQP clients reach."""
    return AmqpServices(
        sas=fleet.hub_sas,  # type: ignore[attr-defined]
        messages=fleet.hub_messages,  # type: ignore[attr-defined]
        eventhub=fleet.hub_eventhub,  # type: ignore[attr-defined]
        executor=executor,
        hostnames=tuple(fleet.hub_sas.hostnames),  # type: ignore[attr-defined]
    )
