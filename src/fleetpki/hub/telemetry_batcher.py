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
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence

from fleetpki.errors import UnavailableError
from fleetpki.hub.azure.topics import ClientIdentity, Telemetry
from fleetpki.hub.backend import TelemetryRecord
from fleetpki.hub.link import Link
from fleetpki.hub.protocol import ConnectionState

__all__ = ["DEFAULT_BATCH_WINDOW", "MAX_RETRY_PAUSE", "TelemetryBatcher", "telemetry_record"]

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
        identity.module_id,
        enqueued_at,
        payload,
        {
            name: value
            for attribute, name in _SYSTEM_NAMES.items()
            if (value := getattr(system, attribute)) is not None
        },
        application,
    )


class TelemetryBatcher:
    """Groups telemetry into one commit per batch and PUBACKs each message after its commit.

    Args:
        store: stores a batch durably (the backend's ``store_telemetry`` in the broker's
            one storage thread, so commits stay in order and never overlap).
        window: how long a batch collects messages (seconds).
    """

    def __init__(
        self, store: Callable[[list[TelemetryRecord]], Awaitable[None]], window: float
    ) -> None:
        self._store = store
        self._window = window
        self._records: list[TelemetryRecord] = []
        self._acks: list[tuple[Link, int | None]] = []
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
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            if self._window > 0:
                await asyncio.sleep(self._window)
            while self._records:
                records, acks = self._records[:_MAX_BATCH], self._acks[:_MAX_BATCH]
                del self._records[:_MAX_BATCH], self._acks[:_MAX_BATCH]
                try:
                    await self._store(records)
                except UnavailableError as exc:
                    if self._stopping.is_set():
                        self._give_up(records, acks)
                        continue
                    # Kept, in order, for the next try; nothing is acknowledged meanwhile.
                    self._records[:0], self._acks[:0] = records, acks
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
        out: dict[Link, list[bytes]] = {}
        for link, packet_id in acks:
            link.unacked -= 1
            if link.unacked == _LOW_WATER:
                link.resume_reading()
            if packet_id is not None and link.mqtt.state is ConnectionState.CONNECTED:
                out.setdefault(link, []).append(link.mqtt.puback(packet_id))
        for link, chunks in out.items():
            link.write(b"".join(chunks))

    async def drain(self) -> None:
        """Wait until every queued message has been stored."""
        while self._task is not None:
            await asyncio.shield(self._task)
