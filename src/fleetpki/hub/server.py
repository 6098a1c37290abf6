"""The hub's thin asyncio listener: MQTT 3.1.1 over TLS on uvloop, one `asyncio.Protocol` each.

Bytes go from the transport into the connection's sans-I/O `ServerConnection`; its
events go to the `Broker`; the bytes they produce go back to the transport. Nothing
here understands MQTT or Azure. The transport is the connection's own TLS layer
(`fleetpki.hub.tls_transport.TLSConnection`, on uvloop's TCP transport) rather than
uvloop's SSL protocol, which kept a 256 KiB buffer and ~2.7 KB of objects per
connection. Per connection the hub keeps that, this object (slots) and the state
machine with its small read buffer: ~26 KB per idle device, most of it OpenSSL's
(bench/README.md, "Hub").

The connection has no timer of its own: the broker's `ConnectionDeadlines` looks at
every open connection's `ServerConnection.deadline` (the connect timeout, then 1.5 x
keepalive, MQTT 3.1.1 §3.1.2.10) once a second, so traffic reschedules nothing.

`start_hub` is the hook `fleetpki serve` calls (`fleetpki.api.server.run_servers`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from fleetpki.hub.azure.topics import ClientIdentity
from fleetpki.hub.backend import AuthenticatedDevice, HubBackend
from fleetpki.hub.broker import Broker
from fleetpki.hub.link import ProvisioningClient
from fleetpki.hub.protocol import (
    ConnectRequested,
    Disconnected,
    PingReceived,
    ProtocolViolation,
    PubAckReceived,
    Published,
    ServerConnection,
    Subscribed,
    TimedOut,
    Unsubscribed,
)
from fleetpki.hub.tls import hub_ssl_context, peer_certificates, release_handshake_memory
from fleetpki.hub.tls_transport import TLSConnection, TLSServerSide
from fleetpki.listener import DEFAULT_HANDSHAKE_TIMEOUT, GuardedListener, listening_socket
from fleetpki.settings import DEFAULT_MQTT_PORT

if TYPE_CHECKING:
    from fleetpki.hub.amqp.peer import AmqpServices
    from fleetpki.hub.amqp.server import AmqpServer

__all__ = [
    "READ_BUFFER_SIZE",
    "HubConnection",
    "HubServer",
    "HubTLS",
    "bind_mqtt_socket",
    "start_hub",
]

_log = logging.getLogger("fleetpki.hub")

#: How long a TLS handshake may take before the socket is dropped.
HANDSHAKE_TIMEOUT = DEFAULT_HANDSHAKE_TIMEOUT
#: Open connections allowed at once on the MQTT port (``mqtt_max_connections``).
DEFAULT_MAX_CONNECTIONS = 20000


#: The size of the read buffer one hub server lends all its connections for the bytes
#: TLS decrypts (uvloop's own largest TLS read).
READ_BUFFER_SIZE = 256 * 1024


class HubConnection(asyncio.BufferedProtocol):
    """One client connection: moves bytes between the transport and the state machine.

    A buffered protocol: the TLS layer (`TLSConnection`) decrypts into the buffer
    `get_buffer` lends, which the hub server shares between its connections (a read is
    handled before the next one starts), rather than into a new ``bytes`` per read.
    `data_received` stays, for callers that hand over bytes themselves (MQTT over
    WebSockets).
    """

    __slots__ = (
        "_broker",
        "_paused",
        "_read_buffer",
        "_transport",
        "device",
        "identity",
        "mqtt",
        "provisioning",
        "unacked",
    )

    def __init__(
        self,
        broker: Broker,
        loop: asyncio.AbstractEventLoop,
        read_buffer: bytearray | None = None,
    ) -> None:
        self._broker = broker
        self._read_buffer = read_buffer
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self.mqtt = ServerConnection(clock=loop.time)
        self.device: AuthenticatedDevice | None = None
        self.identity: ClientIdentity | None = None
        self.provisioning: ProvisioningClient | None = None
        self.unacked = 0

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start watching the connect timeout (the TLS handshake is already complete)."""
        # TLSConnection is not an asyncio.Transport subclass, but acts as one.
        self._transport = cast(asyncio.Transport, transport)
        self._broker.deadlines.add(self)

    def data_received(self, data: bytes) -> None:
        """Feed the state machine and handle what it says."""
        self.mqtt.receive_data(data)
        self.process()

    def get_buffer(self, sizehint: int) -> bytearray:
        """The buffer the transport reads into: the server's shared one."""
        if self._read_buffer is None:
            self._read_buffer = bytearray(max(sizehint, 4096))
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were read into the buffer: a copy of them goes to the state machine."""
        assert self._read_buffer is not None
        self.data_received(bytes(memoryview(self._read_buffer)[:nbytes]))

    def eof_received(self) -> bool | None:
        """The client half-closed: close the whole connection."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the broker; the session outlives the connection if CleanSession was 0."""
        self._transport = None
        self._broker.deadlines.discard(self)
        self.mqtt.close()
        self._broker.connection_lost(self)

    def pause_writing(self) -> None:
        """The client reads slowly; stop reading its input until it catches up."""
        self.pause_reading()

    def resume_writing(self) -> None:
        """The client caught up."""
        if self.unacked < 256:
            self.resume_reading()

    # -- Link, for the broker --

    def write(self, data: bytes) -> None:
        """Send bytes to the client; ignored once the transport is gone."""
        transport = self._transport
        if transport is not None and data:
            transport.write(data)

    def close(self, reason: str) -> None:
        """Close the connection now (``reason`` has already been logged by the caller)."""
        self.mqtt.close()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def peer_certificates(self) -> tuple[bytes | None, list[bytes]]:
        """The client's TLS leaf and the other certificates it sent, as DER.

        Read once, for the CONNECT: what OpenSSL kept of the handshake (the sent chain,
        the handshake's buffers) is freed right after (`release_handshake_memory`).
        """
        transport = self._transport
        if transport is None:
            return None, []
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None, []
        certificates = peer_certificates(ssl_object)
        release_handshake_memory(ssl_object)
        return certificates

    def pause_reading(self) -> None:
        """Stop reading (back-pressure while telemetry waits for its commit)."""
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read again."""
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def process(self) -> None:
        """Handle every event the state machine has for us now."""
        broker = self._broker
        mqtt = self.mqtt
        while (event := mqtt.next_event()) is not None:
            kind = type(event)
            if kind is Published:
                broker.on_publish(self, event)  # type: ignore[arg-type]
            elif kind is PubAckReceived:
                broker.on_puback(self, event)  # type: ignore[arg-type]
            elif kind is PingReceived:
                self.write(mqtt.pingresp())
            elif kind is Subscribed:
                broker.on_subscribe(self, event)  # type: ignore[arg-type]
            elif kind is Unsubscribed:
                broker.on_unsubscribe(self, event)  # type: ignore[arg-type]
            elif kind is ConnectRequested:
                broker.on_connect(self, event)  # type: ignore[arg-type]
                return  # the rest waits for accept() (MQTT 3.1.1 §3.1.4-5)
            elif kind is Disconnected:
                self.close("mqtt.disconnect")
                return
            elif kind is ProtocolViolation:
                assert isinstance(event, ProtocolViolation)
                _log.warning("hub: dropped %s: %s (%s)", self._name(), event.code, event.reason)
                self.write(event.reply)
                self.close(event.code)
                return
            if self._transport is None:
                return

    # -- internals --

    def _name(self) -> str:
        connect = self.mqtt.connect_packet
        return repr(connect.client_id) if connect is not None else "a client"

    def deadline_passed(self) -> None:
        """Time the connection out (`ConnectionDeadlines` calls it when it is due)."""
        event = self.mqtt.check_deadline()
        if isinstance(event, TimedOut):
            _log.info("hub: closed %s: %s", self._name(), event.code)
            self.close(event.code)


@dataclass(frozen=True, slots=True)
class HubTLS:
    """The hub's TLS files: its certificate chain and key."""

    certfile: Path
    keyfile: Path


class HubServer:
    """The MQTT/TLS listener and its broker.

    Connections are accepted through a `fleetpki.listener.GuardedListener`: at most
    ``max_connections`` open at once (TLS handshakes included), each handshake within
    ``handshake_timeout`` seconds.

    Args:
        broker: the Azure dialect and the backend.
        ssl_context: from `fleetpki.hub.tls.hub_ssl_context`; ``None`` serves plain TCP
            (tests of the protocol only; devices never connect without TLS).
        max_connections: open connections allowed at once.
        handshake_timeout: seconds a TLS handshake may take.
    """

    def __init__(
        self,
        broker: Broker,
        ssl_context: ssl.SSLContext | None,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.broker = broker
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self._listener: GuardedListener | None = None
        #: The AMQP listener beside this one, when ``start_hub`` started it.
        self.amqp: AmqpServer | None = None
        # What AMQP clients reach, on the AMQP port or over a WebSocket (start_hub).
        self.amqp_services: AmqpServices | None = None

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        assert self._listener is not None, "the hub listens on no port"
        return self._listener.port

    @property
    def listener(self) -> GuardedListener | None:
        """The listener, while the hub runs (its counts of refusals and failed handshakes)."""
        return self._listener

    async def start(
        self, host: str = "127.0.0.1", port: int = 8883, *, sock: socket.socket | None = None
    ) -> None:
        """Bind (or take ``sock``, already listening) and start accepting in the running loop.

        Raises:
            ConflictError: ``serve.port_in_use``.
            ValidationError: ``serve.privileged_port``, ``serve.cannot_bind``.
        """
        loop = asyncio.get_running_loop()
        if sock is None:
            sock = bind_mqtt_socket(host, port)
        sock.setblocking(False)
        self.broker.start()
        read_buffer = bytearray(READ_BUFFER_SIZE)  # lent to each connection's reads in turn
        factory: Callable[[], asyncio.BaseProtocol]
        if self.ssl_context is None:
            factory = lambda: HubConnection(self.broker, loop, read_buffer)  # noqa: E731
        else:
            # TLS on the connection's own memory BIOs (hub/tls_transport.py), not uvloop's.
            side = TLSServerSide(self.ssl_context, self.handshake_timeout, self._handshake_failed)
            factory = lambda: TLSConnection(  # noqa: E731
                HubConnection(self.broker, loop, read_buffer), side
            )
        self._listener = GuardedListener(
            "MQTT",
            sock,
            factory,
            None,  # TLS is the connection's (TLSConnection), with the same timeout
            max_connections=self.max_connections,
            handshake_timeout=self.handshake_timeout,
            setting="mqtt_max_connections",
        ).start()

    def _handshake_failed(self) -> None:
        if self._listener is not None:
            self._listener.failed_handshakes += 1

    async def start_without_listener(self) -> None:
        """Start the broker alone: its connections arrive by another way (MQTT over
        WebSockets on the API port, in an API worker of ``fleetpki serve --workers``)."""
        self.broker.start()

    async def stop(self) -> None:
        """Stop listening, close every connection and store pending telemetry."""
        if self.amqp is not None:
            amqp, self.amqp = self.amqp, None
            await amqp.stop()
        if self.amqp_services is not None:
            services, self.amqp_services = self.amqp_services, None
            services.executor.shutdown(wait=False)
        listener = self._listener
        if listener is not None:
            listener.close()
        await self.broker.stop()
        if listener is not None:
            # Connections the broker does not hold (no CONNECT yet) close here.
            listener.close_connections()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.wait_closed(), 5)
            listener.sock.close()
            self._listener = None


def bind_mqtt_socket(host: str, port: int) -> socket.socket:
    """A listening socket for the MQTT port (``port`` 0 picks one), inheritable by workers.

    Raises:
        ConflictError: ``serve.port_in_use``.
        ValidationError: ``serve.privileged_port``, ``serve.cannot_bind``.
    """
    sock = listening_socket(
        host, port, option="--mqtt-port", fallback=DEFAULT_MQTT_PORT, backlog=4096
    )
    sock.set_inheritable(True)
    return sock


def _backend_for(fleet: Any) -> HubBackend:
    """The database-backed backend: the registry, trust, telemetry and C2D of ``fleet``."""
    from fleetpki.hub.store_backend import StoreHubBackend

    backend: HubBackend = StoreHubBackend(fleet)
    return backend


async def start_hub(
    fleet: Any,
    *,
    host: str | None = None,
    port: int | None = None,
    hostnames: Iterable[str] | None = None,
    backend: HubBackend | None = None,
    sock: socket.socket | None = None,
    listen: bool = True,
    amqp_port: int | None = None,
) -> Callable[[], Awaitable[None]]:
    """Start the hub for ``fleetpki serve`` in the running loop; return its stopper.

    The TLS certificate comes from the server-certificate service (issued by the local
    issuing CA for the hostname, ``localhost`` and 127.0.0.1). On the database-backed
    backend (the default) the broker also becomes the process's direct-method invoker
    for the service API, until it stops. The stopper is the
    `HubServer.stop` bound method, so ``stopper.__self__`` is the running server.

    The AMQP listener (`fleetpki.hub.amqp.server`) starts beside MQTT on ``amqp_port``
    with the same TLS context, and stops with it; a hub node without the MQTT port
    (``listen=False``) has none either, so that of several workers only the primary
    binds it.

    Args:
        sock: the MQTT port, already bound (``fleetpki serve --workers`` binds it once).
        listen: ``False`` starts the broker without the MQTT port: an API worker's hub
            node, which takes MQTT over WebSockets on the API port only.
        amqp_port: the AMQP port (default: the ``amqp_port`` setting; -1: none).

    Raises:
        ConflictError: ``serve.port_in_use`` when the MQTT or the AMQP port is taken.
    """
    settings = fleet.settings
    host = host or settings.host
    port = settings.mqtt_port if port is None else port
    names = tuple(hostnames or (settings.hostname, "localhost", "127.0.0.1"))
    loop = asyncio.get_running_loop()
    context = None
    if listen:
        files = await loop.run_in_executor(
            None, lambda: fleet.server_certificates.ensure(hostname=settings.hostname, host=host)
        )
        context = hub_ssl_context(
            files.certfile, files.keyfile, [files.client_ca_file.read_bytes()]
        )
    if backend is None:
        backend = await loop.run_in_executor(None, _backend_for, fleet)
    broker = Broker(backend, hostnames=names, provisioning=fleet.provisioning)
    server = HubServer(
        broker,
        context,
        max_connections=settings.mqtt_max_connections,
        handshake_timeout=float(settings.tls_handshake_timeout_seconds),
    )
    if listen:
        await server.start(host, port, sock=sock)
    else:
        await server.start_without_listener()
    amqp_port = settings.amqp_port if amqp_port is None else amqp_port
    if amqp_port >= 0:
        from fleetpki.hub.amqp.server import AmqpServer, amqp_services

        executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="fleetpki-amqp")
        # AMQP over WebSockets on the API port (api/amqp_websocket.py) uses these in
        # every worker; the AMQP port itself is the primary's alone.
        server.amqp_services = amqp_services(fleet, executor)
    if context is not None and server.amqp_services is not None:
        amqp = AmqpServer(
            server.amqp_services,
            context,
            max_connections=settings.mqtt_max_connections,
            handshake_timeout=float(settings.tls_handshake_timeout_seconds),
        )
        try:
            await amqp.start(host, amqp_port)
        except BaseException:
            await server.stop()
            raise
        server.amqp = amqp
        _log.info("fleetpki hub on amqps://%s:%s", host, amqp.port)
    from fleetpki.hub.store_backend import StoreHubBackend

    if isinstance(backend, StoreHubBackend):
        # POST /twins/{id}/methods reaches this broker until it stops.
        backend.attach_broker(broker)
    if listen:
        _log.info("fleetpki hub on mqtts://%s:%s", host, server.port)
    return server.stop
