"""Device-to-cloud telemetry (ref §1.5, §1.6): records as stored, batched into one commit each.

Messages arriving within ``window`` seconds of a batch's first one (and any arriving
while a commit runs) share one transaction, and their PUBACKs go out only after the
commit, so a PUBACK means "stored durably" (MQTT 3.1.1 §4.3.2). A connection with
too many messages awaiting their commit stops being read until the backlog drains.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence

from fleetpki.hub.azure.topics import ClientIdentity, Telemetry
from fleetpki.hub.backend import TelemetryRecord
from fleetpki.hub.link import Link
from fleetpki.hub.protocol import ConnectionState

__all__ = ["DEFAULT_BATCH_WINDOW", "TelemetryBatcher", "telemetry_record"]

_log = logging.getLogger("fleetpki.hub")

#: How long the first message of a telemetry batch waits for others (seconds).
DEFAULT_BATCH_WINDOW = 0.002

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
                except Exception:
                    # Not stored, so never acknowledged: the devices re-send after they
                    # reconnect (ref §1.8). Close them rather than leave them waiting.
                    _log.exception("hub: storing %d telemetry messages failed", len(records))
                    for link in {link for link, _ in acks}:
                        link.close("hub.storage_failed")
                    continue
                self._acknowledge(acks)
        finally:
            self._task = None

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
