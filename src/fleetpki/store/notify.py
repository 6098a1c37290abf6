"""Cross-process wake-ups on PostgreSQL: LISTEN for committed outbox events and method calls.

Every outbox append on PostgreSQL sends ``NOTIFY fleetpki_events`` with the event type,
which the server delivers when the transaction commits. :class:`NotifyListener` holds
one autocommit connection that LISTENs on the channel and publishes
:class:`~fleetpki.services.notifications.EventsWritten` on the application's bus, so
consumer workers in this process wake within milliseconds of a commit elsewhere. A
relayed direct method that a hub node claims, declines or answers sends
``NOTIFY fleetpki_methods`` with the call's id, published as
:class:`~fleetpki.services.notifications.MethodCallChanged` for the waiting caller.
An event appended with ``broadcast=True`` also comes whole on ``fleetpki_broadcast``,
published as :class:`~fleetpki.services.notifications.EventBroadcast` (hub nodes close
a revoked device's session on it before their delivery arrives). A dropped connection
is reopened after a pause; the workers' poll covers the gap.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING

import psycopg

from fleetpki.services.notifications import EventBroadcast, EventsWritten, MethodCallChanged
from fleetpki.store.repositories.events import BROADCAST_CHANNEL, NOTIFY_CHANNEL
from fleetpki.store.repositories.hub_nodes import METHODS_CHANNEL

if TYPE_CHECKING:
    from fleetpki.services.events import EventBus
    from fleetpki.store.db import Database

__all__ = ["NotifyListener"]

_log = logging.getLogger(__name__)


class NotifyListener:
    """A thread that turns PostgreSQL notifications into bus notifications.

    Args:
        database: a PostgreSQL database.
        bus: where to publish.
        retry: seconds to wait before reconnecting after an error.
    """

    def __init__(self, database: Database, bus: EventBus, *, retry: float = 1.0) -> None:
        if database.dialect != "postgresql":
            raise ValueError("LISTEN/NOTIFY needs PostgreSQL")
        url = database.engine.url.set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._bus = bus
        self._retry = retry
        self._stopped = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetpki-listen", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Start listening; returns once LISTEN is in place (or ``timeout`` passed)."""
        self._thread.start()
        self._listening.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening (within about a second)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _publish_broadcast(self, text: str) -> None:
        try:
            whole = json.loads(text)
            event = EventBroadcast(
                str(whole["type"]), str(whole["subject"]), dict(whole["payload"])
            )
        except (ValueError, KeyError, TypeError):
            _log.warning("dropped a malformed broadcast on %s", BROADCAST_CHANNEL)
            return
        self._bus.publish(event)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as connection:
                    connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    connection.execute(f"LISTEN {METHODS_CHANNEL}")
                    connection.execute(f"LISTEN {BROADCAST_CHANNEL}")
                    self._listening.set()
                    # Wake the workers once: events committed while we were not
                    # listening would otherwise wait for their poll.
                    self._bus.publish(EventsWritten())
                    while not self._stopped.is_set():
                        for note in connection.notifies(timeout=1.0):
                            if note.channel == METHODS_CHANNEL:
                                self._bus.publish(MethodCallChanged(note.payload))
                            elif note.channel == BROADCAST_CHANNEL:
                                self._publish_broadcast(note.payload)
                            else:
                                self._bus.publish(EventsWritten(frozenset({note.payload})))
            except psycopg.Error as exc:
                _log.warning("LISTEN %s failed (%s); reconnecting", NOTIFY_CHANNEL, exc)
                self._stopped.wait(self._retry)
