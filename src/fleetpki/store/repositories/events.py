"""The outbox on SQL: events, their consumers and one delivery row per event and consumer."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import delete, func, or_, select, text
from sqlalchemy.orm import Session

from fleetpki.services.ports.events import (
    Delivery,
    DeliveryBacklog,
    DeliveryState,
    FailedDelivery,
    WrittenEvent,
)
from fleetpki.store.models import EventConsumer, EventDeliveryRecord, OutboxEvent

__all__ = ["BROADCAST_CHANNEL", "NOTIFY_CHANNEL", "SqlEventLog"]

#: The PostgreSQL channel that carries "events committed" to other processes.
NOTIFY_CHANNEL = "fleetpki_events"
#: The channel that carries broadcast events whole (JSON: type, subject, payload).
BROADCAST_CHANNEL = "fleetpki_broadcast"
#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; larger events go unbroadcast.
_MAX_BROADCAST = 7900

#: Longest error text kept per delivery.
_MAX_ERROR = 2000


class SqlEventLog:
    """:class:`fleetpki.services.ports.events.EventLog` on one session.

    Args:
        session: the unit of work's session.
        dialect: ``sqlite`` or ``postgresql`` (PostgreSQL also gets a NOTIFY, sent by
            the server at commit, so listeners in other processes wake at once).
        written: called with each appended event type, so the unit of work can tell
            this process's dispatchers after the commit.
    """

    def __init__(self, session: Session, dialect: str, written: Any) -> None:
        self._session = session
        self._dialect = dialect
        self._written = written

    def append(
        self,
        event_type: str,
        subject_id: str,
        payload: Mapping[str, Any],
        *,
        at: dt.datetime,
        broadcast: bool = False,
    ) -> int:
        """See :meth:`EventLog.append`."""
        event = OutboxEvent(
            created_at=at, event_type=event_type, subject_id=subject_id, payload=dict(payload)
        )
        self._session.add(event)
        self._session.flush()
        consumers = [
            c.name
            for c in self._session.scalars(select(EventConsumer).order_by(EventConsumer.name))
            if event_type in c.event_types
        ]
        for name in consumers:
            self._session.add(
                EventDeliveryRecord(
                    event_id=event.id,
                    consumer=name,
                    status="pending",
                    attempts=0,
                    next_attempt_at=at,
                )
            )
        if self._dialect == "postgresql":
            # NOTIFY is transactional: PostgreSQL sends it when (and only if) this commits.
            self._session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": NOTIFY_CHANNEL, "payload": event_type},
            )
            if broadcast:
                self._broadcast(event_type, subject_id, payload)
        self._written(event_type)
        return event.id

    def _broadcast(self, event_type: str, subject_id: str, payload: Mapping[str, Any]) -> None:
        whole = json.dumps({"type": event_type, "subject": subject_id, "payload": dict(payload)})
        if len(whole.encode()) < _MAX_BROADCAST:
            self._session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": BROADCAST_CHANNEL, "payload": whole},
            )

    def register_consumer(
        self, name: str, event_types: Collection[str], *, at: dt.datetime
    ) -> None:
        """See :meth:`EventLog.register_consumer`."""
        existing = self._session.get(EventConsumer, name)
        types = sorted(set(event_types))
        if existing is None:
            self._session.add(EventConsumer(name=name, event_types=types, created_at=at))
        elif list(existing.event_types) != types:
            existing.event_types = types
        self._session.flush()

    def unregister_consumer(self, name: str) -> None:
        """See :meth:`EventLog.unregister_consumer`."""
        self._session.execute(
            delete(EventDeliveryRecord).where(EventDeliveryRecord.consumer == name)
        )
        self._session.execute(delete(EventConsumer).where(EventConsumer.name == name))

    def claim_due(
        self, consumer: str, *, now: dt.datetime, lease: dt.timedelta, limit: int
    ) -> Sequence[Delivery]:
        """See :meth:`EventLog.claim_due`."""
        query = (
            select(EventDeliveryRecord, OutboxEvent)
            .join(OutboxEvent, OutboxEvent.id == EventDeliveryRecord.event_id)
            .where(
                EventDeliveryRecord.consumer == consumer,
                EventDeliveryRecord.status == "pending",
                EventDeliveryRecord.next_attempt_at <= now,
                or_(
                    EventDeliveryRecord.claimed_until.is_(None),
                    EventDeliveryRecord.claimed_until <= now,
                ),
            )
            # Oldest due first, not lowest id: a batch that failed and is due again must
            # not be claimed ahead of rows never tried, or a backlog larger than what one
            # backoff interval can work through starves behind its first batch.
            .order_by(EventDeliveryRecord.next_attempt_at, EventDeliveryRecord.id)
            .limit(limit)
        )
        if self._dialect == "postgresql":
            # Several workers of one consumer (API workers, hub nodes) share the rows:
            # each takes rows no other transaction holds (SQLite has one writer anyway).
            query = query.with_for_update(skip_locked=True, of=EventDeliveryRecord)
        claimed: list[Delivery] = []
        for delivery, event in self._session.execute(query):
            delivery.attempts += 1
            delivery.claimed_until = now + lease
            claimed.append(
                Delivery(
                    id=delivery.id,
                    event_id=event.id,
                    consumer=consumer,
                    event_type=event.event_type,
                    subject_id=event.subject_id,
                    payload=dict(event.payload),
                    attempts=delivery.attempts,
                    created_at=event.created_at,
                )
            )
        return claimed

    def mark_delivered(self, delivery_id: int, *, at: dt.datetime) -> None:
        """See :meth:`EventLog.mark_delivered`."""
        delivery = self._session.get(EventDeliveryRecord, delivery_id)
        if delivery is not None:
            delivery.status = "done"
            delivery.delivered_at = at
            delivery.claimed_until = None
            delivery.last_error = None

    def mark_failed(self, delivery_id: int, error: str, *, retry_at: dt.datetime) -> None:
        """See :meth:`EventLog.mark_failed`."""
        delivery = self._session.get(EventDeliveryRecord, delivery_id)
        if delivery is not None:
            delivery.next_attempt_at = retry_at
            delivery.claimed_until = None
            delivery.last_error = error[:_MAX_ERROR]

    def mark_dead(self, delivery_id: int, error: str, *, at: dt.datetime) -> None:
        """See :meth:`EventLog.mark_dead`."""
        delivery = self._session.get(EventDeliveryRecord, delivery_id)
        if delivery is not None:
            delivery.status = "failed"
            delivery.next_attempt_at = at
            delivery.claimed_until = None
            delivery.last_error = error[:_MAX_ERROR]

    def failed(self, consumer: str, *, limit: int) -> Sequence[FailedDelivery]:
        """See :meth:`EventLog.failed`."""
        rows = self._session.execute(
            select(EventDeliveryRecord, OutboxEvent)
            .join(OutboxEvent, OutboxEvent.id == EventDeliveryRecord.event_id)
            .where(EventDeliveryRecord.consumer == consumer, EventDeliveryRecord.status == "failed")
            # Oldest due first, not lowest id: a batch that failed and is due again must
            # not be claimed ahead of rows never tried, or a backlog larger than what one
            # backoff interval can work through starves behind its first batch.
            .order_by(EventDeliveryRecord.next_attempt_at, EventDeliveryRecord.id)
            .limit(limit)
        )
        return [
            FailedDelivery(
                id=delivery.id,
                event_id=event.id,
                event_type=event.event_type,
                subject_id=event.subject_id,
                attempts=delivery.attempts,
                last_error=delivery.last_error,
                created_at=_aware(event.created_at),
            )
            for delivery, event in rows
        ]

    def requeue_failed(self, consumer: str, *, at: dt.datetime) -> int:
        """See :meth:`EventLog.requeue_failed`."""
        records = list(
            self._session.scalars(
                select(EventDeliveryRecord).where(
                    EventDeliveryRecord.consumer == consumer,
                    EventDeliveryRecord.status == "failed",
                )
            )
        )
        for record in records:
            record.status = "pending"
            record.attempts = 0
            record.next_attempt_at = at
            record.claimed_until = None
        return len(records)

    def prune_settled(self, before: dt.datetime, *, limit: int) -> int:
        """See :meth:`EventLog.prune_settled`."""
        unsettled = (
            select(EventDeliveryRecord.id)
            .where(
                EventDeliveryRecord.event_id == OutboxEvent.id,
                EventDeliveryRecord.status != "done",
            )
            .exists()
        )
        ids = list(
            self._session.scalars(
                select(OutboxEvent.id)
                .where(OutboxEvent.created_at < before, ~unsettled)
                .limit(limit)
            )
        )
        if not ids:
            return 0
        # Deliveries first: SQLite enforces the cascade only with its foreign keys on.
        self._session.execute(
            delete(EventDeliveryRecord).where(EventDeliveryRecord.event_id.in_(ids))
        )
        self._session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(ids)))
        return len(ids)

    def backlog(self, consumer: str) -> DeliveryBacklog:
        """See :meth:`EventLog.backlog`."""
        pending = EventDeliveryRecord.status == "pending"
        row = self._session.execute(
            select(
                func.count(EventDeliveryRecord.id),
                func.count(EventDeliveryRecord.last_error),
                func.min(OutboxEvent.created_at),
            )
            .join(OutboxEvent, OutboxEvent.id == EventDeliveryRecord.event_id)
            .where(EventDeliveryRecord.consumer == consumer, pending)
        ).one()
        failed = self._session.scalar(
            select(func.count(EventDeliveryRecord.id)).where(
                EventDeliveryRecord.consumer == consumer, EventDeliveryRecord.status == "failed"
            )
        )
        last_error = self._session.scalar(
            select(EventDeliveryRecord.last_error)
            .where(
                EventDeliveryRecord.consumer == consumer,
                EventDeliveryRecord.status.in_(("pending", "failed")),
                EventDeliveryRecord.last_error.is_not(None),
            )
            .order_by(EventDeliveryRecord.id.desc())
            .limit(1)
        )
        oldest = row[2]
        if oldest is not None:
            oldest = _aware(oldest)
        return DeliveryBacklog(
            consumer=consumer,
            pending=int(row[0]),
            failing=int(row[1]),
            oldest_pending_at=oldest,
            last_error=last_error,
            failed=int(failed or 0),
        )

    def deliveries_of(self, event_type: str, subject_id: str) -> Sequence[DeliveryState]:
        """See :meth:`EventLog.deliveries_of`."""
        event_id = self._session.scalar(
            select(func.max(OutboxEvent.id)).where(
                OutboxEvent.event_type == event_type, OutboxEvent.subject_id == subject_id
            )
        )
        if event_id is None:
            return []
        rows = self._session.scalars(
            select(EventDeliveryRecord)
            .where(EventDeliveryRecord.event_id == event_id)
            .order_by(EventDeliveryRecord.consumer)
        )
        return [
            DeliveryState(
                consumer=r.consumer,
                status=r.status,
                attempts=r.attempts,
                last_error=r.last_error,
                delivered_at=_aware(r.delivered_at) if r.delivered_at else None,
            )
            for r in rows
        ]

    def newest_id(self) -> int:
        """See :meth:`EventLog.newest_id`."""
        return int(self._session.scalar(select(func.max(OutboxEvent.id))) or 0)

    def written_after(
        self, after_id: int, event_types: Collection[str], *, limit: int
    ) -> Sequence[WrittenEvent]:
        """See :meth:`EventLog.written_after` (a primary-key range, filtered by type)."""
        rows = self._session.execute(
            select(OutboxEvent.id, OutboxEvent.event_type, OutboxEvent.subject_id)
            .where(OutboxEvent.id > after_id, OutboxEvent.event_type.in_(list(event_types)))
            .order_by(OutboxEvent.id)
            .limit(limit)
        )
        return [WrittenEvent(row.id, row.event_type, row.subject_id) for row in rows]


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
