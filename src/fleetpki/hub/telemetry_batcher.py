"""Device-to-cloud telemetry (ref §1.5, §1.6): records as stored, batched into one commit each.

Messages arriving within ``window`` seconds of a batch's first one (and any arriving
while a commit runs) share one transaction, and their PUBACKs go out only after the
commit, so a PUBACK means "stored durably" (MQTT 3.1.1 §4.3.2). A connection with
too many messages awaiting their commit stops being read until the backlog drains.

While the database does not answer (``database.unavailable``) the batch is kept and
tried again with backoff, up to :data:`MAX_RETRY_PAUSE` apart: the sessions stay open,
their PUBACKs wait, and once the database is back everything held is stored and
acknowledged; one warning marks the start of the wait and one its end. Any other
failure closes the connections of the batch unacknowledged, as does a hub that stops
while it waits.

Devices connecting and disconnecting (`ConnectionChange`) go through the same queue, so
a device's connection state is recorded in order with its telemetry: a connect before
the messages of that connection, a disconnect after them. Consecutive changes are
recorded in one transaction of their own; one that fails for another reason than an
unavailable database is logged and dropped (nothing waits for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import cast

from fleetpki.errors import UnavailableError
from fleetpki.hub.azure.topics import ClientIdentity, Telemetry
from fleetpki.hub.backend import ConnectionChange, TelemetryRecord
from fleetpki.hub.link import Link
from fleetpki.hub.protocol import ConnectionState
from fleetpki.services.ports.hub import NO_PROPERTIES

__all__ = [
    "DEFAULT_BATCH_WINDOW",
    "MAX_RETRY_PAUSE",
    "TelemetryBatcher",
    "plain_telemetry_record",
    "telemetry_record",
]

_log = logging.getLogger("fleetpki.hub")

#: How long the first message of a telemetry batch waits for others (seconds).
DEFAULT_BATCH_WINDOW = 0.002
#: The longest pause between two tries to store a batch while the database is unavailable.
MAX_RETRY_PAUSE = 2.0
_FIRST_RETRY_PAUSE = 0.1

_MAX_BATCH = 2000
# Per connection: stop reading after this many telemetry messages await their commit.
_HIGH_WATER = 256
_LOW_WATER = 64

# The Azure names of the system properties a device may set (ref §1.6).
_SYSTEM_NAMES = {
    "output_name": "output-name",
    "message_id": "message-id",
    "correlation_id": "correlation-id",
    "user_id": "user-id",
    "content_type": "content-type",
    "content_encoding": "content-encoding",
    "interface_id": "interface-id",
    "expiry_time_utc": "expiry-time-utc",
}


def telemetry_record(
    identity: ClientIdentity,
    message: Telemetry,
    payload: bytes,
    *,
    retain: bool,
    enqueued_at: dt.datetime,
) -> TelemetryRecord:
    """The stored form of a device's telemetry PUBLISH (ref §1.6)."""
    system = message.properties.system
    application = dict(message.properties.application)
    if retain:
        # Azure turns a retained publish into this application property (ref §1.8).
        application["mqtt-retain"] = "true"
    return TelemetryRecord(
        identity.device_id,
        enqueued_at,
        payload,
        {
            name: value
            for attribute, name in _SYSTEM_NAMES.items()
            if (value := getattr(system, attribute)) is not None
        },
        application,
        identity.module_id,
    )


# The application properties of a retained publish without any of its own (ref §1.8).
_RETAINED: Mapping[str, str | None] = MappingProxyType({"mqtt-retain": "true"})


def plain_telemetry_record(
    identity: ClientIdentity, payload: bytes, *, retain: bool, enqueued_at: dt.datetime
) -> TelemetryRecord:
    """`telemetry_record` for a topic without properties (`is_plain_telemetry`), made
    without decoding one: no system properties, no application ones but ``mqtt-retain``."""
    return TelemetryRecord(
        identity.device_id,
        enqueued_at,
        payload,
        NO_PROPERTIES,
        _RETAINED if retain else NO_PROPERTIES,
        identity.module_id,
    )


class TelemetryBatcher:
    """Groups telemetry into one commit per batch and PUBACKs each message after its commit.

    Args:
        store: stores a batch durably (the backend's ``store_telemetry`` in the broker's
            one storage thread, so commits stay in order and never overlap).
        window: how long a batch collects messages (seconds).
        record_connections: records connection changes (the backend's
            ``record_connections``, in the same storage thread).
    """

    def __init__(
        self,
        store: Callable[[list[TelemetryRecord]], Awaitable[None]],
        window: float,
        record_connections: Callable[[list[ConnectionChange]], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._window = window
        self._record_connections = record_connections
        self._records: list[TelemetryRecord] = []
        self._acks: list[tuple[Link, int | None]] = []
        # Connection changes, each with how many queued messages go before it.
        self._changes: list[tuple[int, ConnectionChange]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._waiting_since: float | None = None
        self._pause_length = _FIRST_RETRY_PAUSE

    def add(self, record: TelemetryRecord, link: Link, packet_id: int | None) -> None:
        """Queue one message from ``link``; its PUBACK (QoS 1) follows its commit."""
        self._records.append(record)
        self._acks.append((link, packet_id))
        link.unacked += 1
        if link.unacked == _HIGH_WATER:
            link.pause_reading()
        self._start()

    def add_connection(self, change: ConnectionChange) -> None:
        """Queue a connect or disconnect, recorded after every message queued before it."""
        if self._record_connections is None:
            return
        self._changes.append((len(self._records), change))
        self._start()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _shift(self, count: int) -> None:
        """``count`` messages left the front of the queue (negative: came back to it)."""
        self._changes = [(ahead - count, change) for ahead, change in self._changes]

    async def _run(self) -> None:
        try:
            if self._window > 0:
                await asyncio.sleep(self._window)
            while self._records or self._changes:
                ahead = self._changes[0][0] if self._changes else len(self._records)
                if ahead == 0:
                    await self._store_changes()
                    continue
                count = min(ahead, _MAX_BATCH)
                records, acks = self._records[:count], self._acks[:count]
                del self._records[:count], self._acks[:count]
                self._shift(count)
                try:
                    await self._store(records)
                except UnavailableError as exc:
                    if self._stopping.is_set():
                        self._give_up(records, acks)
                        continue
                    # Kept, in order, for the next try; nothing is acknowledged meanwhile.
                    self._records[:0], self._acks[:0] = records, acks
                    self._shift(-count)
                    await self._pause(exc)
                    continue
                except Exception:
                    # Not stored, so never acknowledged: the devices re-send after they
                    # reconnect (ref §1.8). Close them rather than leave them waiting.
                    _log.exception("hub: storing %d telemetry messages failed", len(records))
                    for link in {link for link, _ in acks}:
                        link.close("hub.storage_failed")
                    continue
                self._recovered()
                self._acknowledge(acks)
        finally:
            self._task = None

    async def _store_changes(self) -> None:
        """Record the connection changes at the front of the queue, in one transaction."""
        assert self._record_connections is not None
        count = next((i for i, (ahead, _) in enumerate(self._changes) if ahead), len(self._changes))
        changes = [change for _, change in self._changes[:count]]
        del self._changes[:count]
        try:
            await self._record_connections(changes)
        except UnavailableError as exc:
            if self._stopping.is_set():
                _log.warning("hub: stopping; %d connection changes not recorded", len(changes))
                return
            self._changes[:0] = [(0, change) for change in changes]
            await self._pause(exc)
            return
        except Exception:
            _log.exception("hub: recording %d connection changes failed", len(changes))
            return
        self._recovered()

    async def _pause(self, exc: UnavailableError) -> None:
        loop = asyncio.get_running_loop()
        if self._waiting_since is None:
            self._waiting_since = loop.time()
            self._pause_length = _FIRST_RETRY_PAUSE
            _log.warning(
                "hub: %s (%s): holding %d telemetry messages, their PUBACKs wait, until it answers",
                exc.code,
                exc.message,
                len(self._records),
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self._pause_length)
        self._pause_length = min(self._pause_length * 2, MAX_RETRY_PAUSE)

    def _recovered(self) -> None:
        if self._waiting_since is not None:
            waited = asyncio.get_running_loop().time() - self._waiting_since
            self._waiting_since = None
            _log.warning("hub: the database answers again after %.1f s; telemetry stored", waited)

    def _give_up(self, records: list[TelemetryRecord], acks: list[tuple[Link, int | None]]) -> None:
        # The hub stops: unacknowledged messages are re-sent by their devices (ref §1.8).
        _log.warning(
            "hub: stopping; %d telemetry messages not stored, not acknowledged", len(records)
        )
        for link in {link for link, _ in acks}:
            link.close("hub.shutdown")

    def stop_retrying(self) -> None:
        """The hub is stopping: try a held batch once more at most, then close its senders."""
        self._stopping.set()

    @staticmethod
    def _acknowledge(acks: Sequence[tuple[Link, int | None]]) -> None:
        """PUBACK a stored batch: per connection, its ids in order in one write."""
        by_link: dict[Link, list[int | None]] = {}
        for link, packet_id in acks:
            ids = by_link.get(link)
            if ids is None:
                by_link[link] = [packet_id]
            else:
                ids.append(packet_id)
        for link, ids in by_link.items():
            before = link.unacked
            link.unacked = before - len(ids)
            if link.unacked <= _LOW_WATER < before:
                link.resume_reading()
            if link.mqtt.state is ConnectionState.CONNECTED:
                qos1 = [i for i in ids if i is not None] if None in ids else ids
                if qos1:
                    link.write(link.mqtt.pubacks(cast("list[int]", qos1)))

    async def drain(self) -> None:
        """Wait until every queued message has been stored (and connection change recorded)."""
        while self._task is not None:
            await asyncio.shield(self._task)
