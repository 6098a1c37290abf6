"""The outbox as the services see it: events written with a change, a delivery per consumer."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleetpki.services.notifications import Notification

__all__ = [
    "Delivery",
    "DeliveryBacklog",
    "DeliveryState",
    "EventLog",
    "FailedDelivery",
    "Notification",
    "WrittenEvent",
]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event as one consumer is to receive it.

    Attributes:
        id: the delivery's id (one per event and consumer).
        event_id: the outbox event's id, the same for every consumer.
        consumer: the consumer's name (``hub:<node>``, ``link:<name>``).
        event_type: e.g. ``certificate.revoked``.
        subject_id: what the event is about (a serial, a device id).
        payload: the event's data, as written with the change.
        attempts: deliveries tried so far, this one included.
        created_at: when the change committed.
    """

    id: int
    event_id: int
    consumer: str
    event_type: str
    subject_id: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    attempts: int = 1
    created_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class DeliveryBacklog:
    """What a consumer still has to do.

    Attributes:
        pending: deliveries still to make (retries included).
        failing: pending deliveries whose last attempt failed.
        failed: deliveries given up on (a permanent error, or too many attempts); they
            wait for an operator's retry.
        oldest_pending_at: when the oldest pending event committed.
        last_error: the newest error of a pending or failed delivery.
    """

    consumer: str
    pending: int
    failing: int
    oldest_pending_at: dt.datetime | None
    last_error: str | None
    failed: int = 0


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """A delivery given up on, as an operator sees it."""

    id: int
    event_id: int
    event_type: str
    subject_id: str
    attempts: int
    last_error: str | None
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """Where one event stands for one consumer (``pending``, ``done`` or ``failed``)."""

    consumer: str
    status: str
    attempts: int
    last_error: str | None
    delivered_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class WrittenEvent:
    """An outbox event as a reader of recent events sees it (no delivery state)."""

    id: int
    event_type: str
    subject_id: str


class EventLog(Protocol):
    """The outbox of one unit of work."""

    def append(
        self,
        event_type: str,
        subject_id: str,
        payload: Mapping[str, Any],
        *,
        at: dt.datetime,
        broadcast: bool = False,
    ) -> int:
        """Write an event and one pending delivery for each consumer subscribed to its type.

        Consumers in other processes are woken when the unit commits (LISTEN/NOTIFY on
        PostgreSQL, their short poll on SQLite). ``broadcast`` also carries the event
        itself to listening processes when it commits (PostgreSQL only, small payloads),
        published there as ``EventBroadcast``: for acting at once on what is idempotent
        (closing a session), ahead of the delivery that still follows. Returns the
        event's id.
        """
        ...

    def register_consumer(
        self, name: str, event_types: Collection[str], *, at: dt.datetime
    ) -> None:
        """Subscribe ``name`` to ``event_types`` from now on (idempotent; replaces the types)."""
        ...

    def unregister_consumer(self, name: str) -> None:
        """Forget a consumer and its undelivered events (a hub link removed)."""
        ...

    def claim_due(
        self, consumer: str, *, now: dt.datetime, lease: dt.timedelta, limit: int
    ) -> Sequence[Delivery]:
        """Due deliveries of ``consumer``, oldest first, leased so no other worker takes them.

        Each claimed delivery counts one attempt. A lease that runs out (its worker
        died) makes the delivery due again, so nothing is lost on a crash.
        """
        ...

    def mark_delivered(self, delivery_id: int, *, at: dt.datetime) -> None:
        """Record a successful delivery."""
        ...

    def mark_failed(self, delivery_id: int, error: str, *, retry_at: dt.datetime) -> None:
        """Record a failed attempt; the delivery is due again at ``retry_at``."""
        ...

    def mark_dead(self, delivery_id: int, error: str, *, at: dt.datetime) -> None:
        """Give up on a delivery: it is kept, as failed, until :meth:`requeue_failed`."""
        ...

    def backlog(self, consumer: str) -> DeliveryBacklog:
        """Pending, failing and failed deliveries of ``consumer``."""
        ...

    def failed(self, consumer: str, *, limit: int) -> Sequence[FailedDelivery]:
        """The failed deliveries of ``consumer``, oldest first."""
        ...

    def deliveries_of(self, event_type: str, subject_id: str) -> Sequence[DeliveryState]:
        """Each consumer's delivery of the newest ``event_type`` event about ``subject_id``."""
        ...

    def requeue_failed(self, consumer: str, *, at: dt.datetime) -> int:
        """Make every failed delivery of ``consumer`` due now, with fresh attempts."""
        ...

    def prune_settled(self, before: dt.datetime, *, limit: int) -> int:
        """Delete up to ``limit`` events written before ``before`` whose every delivery is
        done, with their deliveries; an event still pending or failed for any consumer
        stays. Returns how many events went.
        """
        ...

    def newest_id(self) -> int:
        """The id of the newest event written (committed or in this unit), 0 for none."""
        ...

    def written_after(
        self, after_id: int, event_types: Collection[str], *, limit: int
    ) -> Sequence[WrittenEvent]:
        """Events of ``event_types`` with an id above ``after_id``, oldest first.

        For in-memory caches that follow changes made by other processes without a
        consumer of their own (:mod:`fleetpki.services.ocsp_cache`): ids grow, though
        on PostgreSQL not in commit order, so such readers look back over a window.
        """
        ...
