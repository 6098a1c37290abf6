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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "GuardedListener"]

_log = logging.getLogger("fleetpki.listener")

#: Seconds a client may take to complete its TLS handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# How often closed transports are forgotten; and how often the refusal is logged.
_SWEEP_INTERVAL = 1.0
_REFUSAL_LOG_INTERVAL = 10.0


class GuardedListener:
    """Accept connections on ``sock`` for ``protocol_factory``, at most ``max_connections``.

    Args:
        name: what the port serves, for the log (``API``, ``MQTT``).
        sock: a bound, listening socket; the listener makes it non-blocking.
        protocol_factory: makes the protocol of each connection.
        ssl_context: TLS for every connection (``None``: plain TCP, tests only).
        max_connections: open connections allowed at once, handshakes included.
        handshake_timeout: seconds a TLS handshake may take.
        setting: the configuration key that sets the cap, named in the log line.
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
    ) -> None:
        self.name = name
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
