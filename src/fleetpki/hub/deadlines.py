"""One timer for the MQTT deadlines of all of a broker's connections.

Each connection has a deadline (`fleetpki.hub.protocol.ServerConnection.deadline`):
the connect timeout until its CONNECT, then 1.5 x keepalive after its last packet
(MQTT 3.1.1 §3.1.2.10). A timer per connection cost ~0.6 KB of an idle connection's
memory (uvloop's ``TimerHandle``, its libuv timer and the bound callback; bench/README.md,
"Hub"). Instead the broker keeps the open connections in one set, and a single timer
looks at their deadlines every `SWEEP_INTERVAL` seconds while there are any: a
deadline is acted on up to that much late, which MQTT's keepalive allows.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from fleetpki.hub.protocol import ServerConnection

__all__ = ["SWEEP_INTERVAL", "ConnectionDeadlines", "TimedConnection"]

#: Seconds between two looks at the deadlines.
SWEEP_INTERVAL = 1.0


class TimedConnection(Protocol):
    """A connection whose MQTT deadline the sweep watches."""

    mqtt: ServerConnection

    def deadline_passed(self) -> None:
        """The connection's deadline is in the past: time it out (or not, if it moved)."""


class ConnectionDeadlines:
    """The open connections of a broker, and the one timer that times them out.

    Args:
        interval: seconds between two sweeps.
    """

    __slots__ = ("_connections", "_handle", "interval")

    def __init__(self, interval: float = SWEEP_INTERVAL) -> None:
        self.interval = interval
        self._connections: set[TimedConnection] = set()
        self._handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._connections)

    def __contains__(self, connection: object) -> bool:
        return connection in self._connections

    def add(self, connection: TimedConnection) -> None:
        """Watch ``connection`` (in the running loop) until `discard`."""
        self._connections.add(connection)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.interval, self._sweep)

    def discard(self, connection: TimedConnection) -> None:
        """Stop watching ``connection`` (closed)."""
        self._connections.discard(connection)

    def stop(self) -> None:
        """Cancel the timer (the broker stops)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _sweep(self) -> None:
        self._handle = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = [
            connection
            for connection in self._connections
            if (deadline := connection.mqtt.deadline) is not None and deadline <= now
        ]
        for connection in due:
            connection.deadline_passed()
        if self._connections:
            self._handle = loop.call_later(self.interval, self._sweep)
