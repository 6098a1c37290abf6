"""A guarded TCP/TLS listener: a cap on open connections and a TLS handshake timeout.

Both of ``fleetpki serve``'s ports (the HTTPS API and the hub's MQTT) accept through
this listener rather than ``loop.create_server``, for two reasons:

* a connection counts from the moment it is accepted, while its TLS handshake is
  still running, so half-open handshakes cannot exhaust the descriptors; and
* when the cap is reached a new connection is accepted and closed at once, with a
  log line that names the port and the setting, rather than left in the kernel's
  backlog where nobody sees it.

Each accepted socket gets its TLS handshake within ``handshake_timeout`` seconds
(``loop.connect_accepted_socket``), else it is closed. Once the handshake is done the
connection belongs to its protocol; the listener keeps its transport only to count it,
and drops it once the transport closes (a sweep at most every ``_SWEEP_INTERVAL``
seconds, and whenever the cap is reached).

`listening_socket` binds the ports, and says what to do when it cannot: the Azure SDKs
dial fixed ports (8883 for MQTT, 443 for MQTT over WebSockets and the service API,
5671 for AMQP; ref §0), and 443 is privileged on Linux.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable

from fleetpki.errors import ConflictError, ValidationError

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "SHARED_HANDSHAKE_WAIT",
    "GuardedListener",
    "listening_socket",
    "privileged_port_help",
]

_log = logging.getLogger("fleetpki.listener")

#: Seconds a client may take to complete its TLS handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# How often closed transports are forgotten; and how often the refusal is logged.
_SWEEP_INTERVAL = 1.0
#: Seconds a listener on a socket shared with other processes waits for an accepted
#: connection's TLS handshake before it accepts the next one (see GuardedListener).
SHARED_HANDSHAKE_WAIT = 0.005
_REFUSAL_LOG_INTERVAL = 10.0


class GuardedListener:
    """Accept connections on ``sock`` for ``protocol_factory``, at most ``max_connections``.

    Args:
        name: what the port serves, for the log (``API``, ``MQTT``).
        sock: a bound, listening socket; the listener makes it non-blocking.
        protocol_factory: makes the protocol of each connection.
        ssl_context: TLS for every connection (``None``: plain TCP, for tests, or for a
            protocol that runs TLS itself with the same timeout, as the hub's MQTT port
            does: `fleetpki.hub.tls_transport`).
        max_connections: open connections allowed at once, handshakes included.
        handshake_timeout: seconds a TLS handshake may take.
        setting: the configuration key that sets the cap, named in the log line.
        shared: other processes accept on the same socket (``serve --workers``): each
            accepted connection's handshake is then waited for (at most
            :data:`SHARED_HANDSHAKE_WAIT` seconds) before the next accept, so that a
            burst of new connections spreads over the processes instead of going all
            to the first one awake (which took every keep-alive connection of a
            benchmark's burst in most rounds on two cores).
    """

    def __init__(
        self,
        name: str,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        ssl_context: ssl.SSLContext | None,
        *,
        max_connections: int,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        setting: str = "max_connections",
        shared: bool = False,
    ) -> None:
        self.name = name
        self._shared = shared
        self.sock = sock
        self._factory = protocol_factory
        self._ssl = ssl_context
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self._setting = setting
        self._transports: set[asyncio.BaseTransport] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None
        self._swept_at = 0.0
        self._refusal_logged_at = -_REFUSAL_LOG_INTERVAL
        #: Connections refused because the cap was reached, since the start.
        self.refused = 0
        #: TLS handshakes that failed or timed out, since the start.
        self.failed_handshakes = 0

    @property
    def port(self) -> int:
        """The bound port."""
        port: int = self.sock.getsockname()[1]
        return port

    @property
    def open_connections(self) -> int:
        """Connections open now: handshakes in progress and established ones."""
        return len(self._handshakes) + sum(1 for t in self._transports if not t.is_closing())

    def start(self) -> GuardedListener:
        """Start accepting in the running loop; returns ``self``."""
        self.sock.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())
        return self

    def close(self) -> None:
        """Stop accepting and abandon handshakes in progress (open connections stay)."""
        if self._accepting is not None:
            self._accepting.cancel()
        for task in list(self._handshakes):
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until accepting has stopped."""
        if self._accepting is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)

    def close_connections(self) -> None:
        """Close every established connection (their protocols see connection_lost)."""
        for transport in list(self._transports):
            transport.close()

    # -- internals --

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as exc:
                # EMFILE and friends: back off briefly instead of spinning.
                _log.warning("%s port %s: accept failed: %s", self.name, self.port, exc)
                await asyncio.sleep(0.1)
                continue
            if self._full():
                self._refuse(conn)
                continue
            task = loop.create_task(self._handshake(conn))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)
            if self._shared:
                # While this process is busy with the handshake, the others on the
                # socket take the next connections (see ``shared``).
                await asyncio.wait({task}, timeout=SHARED_HANDSHAKE_WAIT)

    def _full(self) -> bool:
        now = time.monotonic()
        count = len(self._handshakes) + len(self._transports)
        if count >= self.max_connections or now - self._swept_at >= _SWEEP_INTERVAL:
            self._swept_at = now
            self._transports = {t for t in self._transports if not t.is_closing()}
            count = len(self._handshakes) + len(self._transports)
        return count >= self.max_connections

    def _refuse(self, conn: socket.socket) -> None:
        self.refused += 1
        with contextlib.suppress(OSError):
            conn.close()
        now = time.monotonic()
        if now - self._refusal_logged_at >= _REFUSAL_LOG_INTERVAL:
            self._refusal_logged_at = now
            _log.warning(
                "%s port %s: connection limit reached (%s open, %s = %s): refusing new "
                "connections (%s refused so far)",
                self.name,
                self.port,
                len(self._handshakes) + len(self._transports),
                self._setting,
                self.max_connections,
                self.refused,
            )

    async def _handshake(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.connect_accepted_socket(
                self._factory,
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=self.handshake_timeout if self._ssl else None,
            )
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                conn.close()
            raise
        except Exception as exc:  # a failed or timed-out handshake: the client's problem
            self.failed_handshakes += 1
            _log.debug("%s port %s: TLS handshake failed: %r", self.name, self.port, exc)
            with contextlib.suppress(OSError):
                conn.close()
            return
        self._transports.add(transport)


def privileged_port_help(port: int, fallback: int) -> str:
    """What to do when ``port`` (below 1024) cannot be bound: the ways, each a command.

    ``fallback`` is the unprivileged port the server can listen on instead, behind a
    port forward.
    """
    python = os.path.realpath(sys.executable)
    return (
        f"ports below {min(port + 1, 1024)} need a privilege on Linux. Any one of: run "
        "fleetpki serve under systemd with AmbientCapabilities=CAP_NET_BIND_SERVICE; or "
        f"grant this Python the capability (every script it runs gets it): sudo setcap "
        f"cap_net_bind_service=+ep {python}; or let every user bind from {port}: sudo "
        f"sysctl net.ipv4.ip_unprivileged_port_start={port}; or serve on {fallback} and "
        f"forward {port} to it: sudo iptables -t nat -A OUTPUT -o lo -p tcp --dport {port} "
        f"-j REDIRECT --to-ports {fallback} (and the same in PREROUTING for other hosts)"
    )


def listening_socket(
    host: str, port: int, *, option: str, fallback: int, backlog: int = 2048
) -> socket.socket:
    """A TCP socket listening on ``host:port`` (port 0 picks a free port).

    Args:
        host / port: where to listen.
        option: the ``fleetpki serve`` option that sets the port, named in errors.
        fallback: the unprivileged default port, offered behind a forward when
            ``port`` is privileged.
        backlog: the listen backlog.

    Raises:
        ConflictError: ``serve.port_in_use`` when the port is taken.
        ValidationError: ``serve.privileged_port`` when the port needs a privilege
            this process lacks (the message says how to grant it or forward the port);
            ``serve.cannot_bind`` for other failures (a bad address).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConflictError(
                "serve.port_in_use",
                f"port {port} on {host} is already in use; stop the other server or pick "
                f"another port with {option}",
            ) from None
        if exc.errno == errno.EACCES and 0 < port < 1024:
            raise ValidationError(
                "serve.privileged_port",
                f"cannot listen on {host}:{port} ({option}): "
                + privileged_port_help(port, fallback),
            ) from None
        raise ValidationError(
            "serve.cannot_bind", f"cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    return sock
