"""The hub's Event Hubs-compatible endpoint: stored telemetry read as partitions.

Azure IoT Hub forwards telemetry to a built-in Event Hub that back ends read with
azure-eventhub's ``EventHubConsumerClient`` (learn.microsoft.com, iot-hub "Read
device-to-cloud messages from the built-in endpoint"). Here the Event Hub *is* the
telemetry table: every message stored before its PUBACK is an event, so nothing
acknowledged is lost across a restart, and a reader can start anywhere in it.

* A device's messages all go to one partition (a stable hash of its id,
  :func:`fleetpki.hub.amqp.addresses.partition_of`), so each partition keeps every
  device's order, as Azure's does.
* An event's sequence number is its row id, and its offset the same number as text:
  both grow within a partition, as Azure's do, but are not contiguous there (the
  numbers of the other partitions' events are skipped).
* Consumer groups: ``$Default`` only; another is ``eventhub.consumer_group_not_found``.
"""

from __future__ import annotations

import copy
import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

from fleetpki.errors import NotFoundError, ValidationError
from fleetpki.hub.amqp.addresses import DEFAULT_CONSUMER_GROUP, partition_of
from fleetpki.services.context import Clock
from fleetpki.services.ports import Store, UnitOfWork

__all__ = [
    "DEFAULT_PARTITIONS",
    "EventHubInfo",
    "EventHubService",
    "PartitionEvent",
    "PartitionInfo",
    "PositionKind",
]

#: Partitions of the built-in endpoint (Azure's default for a new hub is 4).
DEFAULT_PARTITIONS = 4
# Rows read per query while looking for one partition's events.
_SCAN_PAGE = 500
# Rows looked at per read at most, so that a sparse partition cannot hold a thread long.
_SCAN_LIMIT = 5000


class PositionKind(enum.Enum):
    """What a reader's start position is given in (azure-eventhub's selector filter)."""

    OFFSET = "offset"
    SEQUENCE_NUMBER = "sequence-number"
    ENQUEUED_TIME = "enqueued-time"


@dataclass(frozen=True, slots=True)
class PartitionEvent:
    """One stored telemetry message as an event of its partition."""

    sequence_number: int
    device_id: str
    module_id: str | None
    enqueued_at: dt.datetime
    body: bytes
    system_properties: dict[str, Any]
    properties: dict[str, Any]

    @property
    def offset(self) -> str:
        """The event's offset (its sequence number as text)."""
        return str(self.sequence_number)


@dataclass(frozen=True, slots=True)
class EventHubInfo:
    """What ``$management`` answers for the Event Hub (``com.microsoft:eventhub``)."""

    name: str
    created_at: dt.datetime
    partition_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """What ``$management`` answers for a partition (``com.microsoft:partition``)."""

    name: str
    partition_id: str
    begin_sequence_number: int
    last_enqueued_sequence_number: int
    last_enqueued_offset: str
    last_enqueued_time: dt.datetime
    is_empty: bool


class EventHubService:
    """Reads stored telemetry as the partitions of the built-in Event Hub.

    Args:
        store: the database.
        clock: the source of "now".
        name: the Event Hub's name (``EntityPath``): the hub's name.
        partitions: how many partitions (changing it moves devices between partitions).
    """

    def __init__(
        self, store: Store, clock: Clock, *, name: str, partitions: int = DEFAULT_PARTITIONS
    ) -> None:
        self._store = store
        self._clock = clock
        self.name = name
        self.partitions = partitions
        self._created_at = clock()

    def check_entity(self, entity: str, consumer_group: str | None = None) -> None:
        """Refuse an Event Hub name other than :attr:`name`, or an unknown consumer group.

        Raises:
            NotFoundError: ``eventhub.not_found``, ``eventhub.consumer_group_not_found``.
        """
        if entity.lower() != self.name.lower():
            raise NotFoundError("eventhub.not_found", f"no Event Hub {entity!r} on this hub")
        if consumer_group is not None and consumer_group.lower() != DEFAULT_CONSUMER_GROUP:
            raise NotFoundError(
                "eventhub.consumer_group_not_found",
                f"no consumer group {consumer_group!r}: only $Default is served",
            )

    def partition_number(self, partition_id: str) -> int:
        """The partition ``partition_id`` names.

        Raises:
            NotFoundError: ``eventhub.partition_not_found``.
        """
        if not (partition_id.isascii() and partition_id.isdigit()):
            raise NotFoundError("eventhub.partition_not_found", f"no partition {partition_id!r}")
        number = int(partition_id)
        if number >= self.partitions:
            raise NotFoundError("eventhub.partition_not_found", f"no partition {partition_id!r}")
        return number

    def info(self) -> EventHubInfo:
        """The Event Hub's name, creation time and partition ids."""
        return EventHubInfo(
            self.name, self._created_at, tuple(str(n) for n in range(self.partitions))
        )

    def partition_info(self, partition_id: str) -> PartitionInfo:
        """A partition's first and last sequence numbers and last enqueued time.

        Raises:
            NotFoundError: ``eventhub.partition_not_found``.
        """
        number = self.partition_number(partition_id)
        with self._store.transaction() as tx:
            first = _first_in(tx, number, self.partitions)
            last = _last_in(tx, number, self.partitions)
        if first is None or last is None:
            return PartitionInfo(self.name, partition_id, 0, -1, "-1", self._created_at, True)
        return PartitionInfo(
            self.name,
            partition_id,
            first.sequence_number,
            last.sequence_number,
            last.offset,
            last.enqueued_at,
            False,
        )

    def start_after(self, kind: PositionKind, value: str, *, inclusive: bool) -> int:
        """The sequence number after which a reader starting at ``value`` reads.

        ``-1`` (offset or sequence number) is the start of the stream and ``@latest``
        its end; an enqueued time is milliseconds since the epoch.

        Raises:
            ValidationError: ``eventhub.bad_position``.
        """
        if value == "@latest":
            with self._store.transaction() as tx:
                return tx.hub_telemetry.latest_id(None)
        try:
            number = int(value)
        except ValueError:
            raise ValidationError(
                "eventhub.bad_position", f"{value!r} is not an offset or a number"
            ) from None
        if kind is PositionKind.ENQUEUED_TIME:
            at = dt.datetime.fromtimestamp(number / 1000, dt.UTC)
            if inclusive:
                at -= dt.timedelta(microseconds=1)
            with self._store.transaction() as tx:
                return tx.hub_telemetry.last_id_at(at)
        if number < 0:
            return 0
        return number - 1 if inclusive else number

    def read(self, partition_id: str, after: int, limit: int) -> tuple[list[PartitionEvent], int]:
        """Up to ``limit`` events of a partition after sequence number ``after``.

        Returns the events and where the next read goes on from (past the rows looked at,
        which may belong to other partitions).

        Raises:
            NotFoundError: ``eventhub.partition_not_found``.
        """
        number = self.partition_number(partition_id)
        events: list[PartitionEvent] = []
        cursor = after
        scanned = 0
        with self._store.transaction() as tx:
            while len(events) < limit and scanned < _SCAN_LIMIT:
                rows = tx.hub_telemetry.list(device_id=None, after_id=cursor, limit=_SCAN_PAGE)
                for row in rows:
                    cursor = row.id
                    if partition_of(row.device_id, self.partitions) == number:
                        events.append(_event(row))
                        if len(events) == limit:
                            break
                scanned += len(rows)
                if len(rows) < _SCAN_PAGE:
                    break
        return events, cursor


def _event(row: Any) -> PartitionEvent:
    return PartitionEvent(
        sequence_number=row.id,
        device_id=row.device_id,
        module_id=row.module_id,
        enqueued_at=row.enqueued_at,
        body=bytes(row.body),
        system_properties=copy.deepcopy(row.system_properties),
        properties=copy.deepcopy(row.properties),
    )


def _first_in(tx: UnitOfWork, number: int, partitions: int) -> PartitionEvent | None:
    cursor: int | None = None
    while True:
        rows = tx.hub_telemetry.list(device_id=None, after_id=cursor, limit=_SCAN_PAGE)
        for row in rows:
            if partition_of(row.device_id, partitions) == number:
                return _event(row)
        if len(rows) < _SCAN_PAGE:
            return None
        cursor = rows[-1].id


def _last_in(tx: UnitOfWork, number: int, partitions: int) -> PartitionEvent | None:
    # The newest row of each device, newest first: the partition's last event is among them.
    newest: PartitionEvent | None = None
    cursor: int | None = None
    while True:
        rows = tx.hub_telemetry.list(device_id=None, after_id=cursor, limit=_SCAN_PAGE)
        for row in rows:
            if partition_of(row.device_id, partitions) == number:
                newest = _event(row)
        if len(rows) < _SCAN_PAGE:
            return newest
        cursor = rows[-1].id
