"""Event delivery: each consumer takes its own deliveries of outbox events, with retries.

Theory of operation. A change that other parts must learn (a revocation, later a CA
renewal or a hub link's work) appends an outbox event in its own transaction; the
event log writes one delivery row for every consumer subscribed to the event's type
(:meth:`EventLog.append`). A :class:`ConsumerWorker` runs one consumer in a thread:

1. it waits to be woken: at once when this process commits an event (the bus's
   :class:`~fleetpki.services.notifications.EventsWritten`), when another process
   commits one (PostgreSQL LISTEN/NOTIFY, see :mod:`fleetpki.store.notify`), or after
   ``poll`` seconds (SQLite has no NOTIFY; a lost wake-up costs at most one poll);
2. it claims the consumer's due deliveries in one short transaction, each leased for
   ``lease`` so a second worker of the same consumer skips them and a crashed worker's
   deliveries come back when the lease ends;
3. it calls the handler for each delivery with *no* transaction open (a handler may
   talk to a hub over the network);
4. it records each outcome in one more short transaction: done; or failed with the
   error and a retry time after exponential backoff with jitter (or the hub's own
   ``Retry-After``, from :class:`DeliveryFailed`); or, for a permanent error or after
   ``max_attempts``, given up on as *failed*, kept with its last error until an
   operator requeues it (:meth:`EventDelivery.retry_failed`).

Handlers must be idempotent: a delivery whose outcome was not recorded (a crash
between 3 and 4) is delivered again.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass

from fleetpki.errors import UnavailableError
from fleetpki.services.context import Clock
from fleetpki.services.events import EventBus
from fleetpki.services.notifications import EventsWritten, Notification
from fleetpki.services.ports import Store
from fleetpki.services.ports.events import Delivery, DeliveryBacklog, FailedDelivery

__all__ = [
    "DEFAULT_POLL",
    "Backoff",
    "ConsumerWorker",
    "DeliveryFailed",
    "EventDelivery",
    "Handler",
    "Outcome",
]

_log = logging.getLogger(__name__)

#: Seconds between looks at the outbox when nothing woke the worker (SQLite, lost NOTIFY).
DEFAULT_POLL = 0.5

Handler = Callable[[Delivery], None]


class DeliveryFailed(Exception):
    """Raised by a handler to say how a delivery failed.

    Args:
        message: what to record as the delivery's last error (no secrets).
        retry_after: seconds the peer asked to wait (HTTP ``Retry-After``), used instead
            of the backoff when longer.
        permanent: retrying cannot help (a refusal, a missing hub): give up at once.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, permanent: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one delivery attempt: ``error`` ``None`` for delivered."""

    delivery: Delivery
    error: str | None = None
    retry_after: float | None = None
    permanent: bool = False


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff").

    Attributes:
        base: the first retry's upper bound, in seconds.
        cap: the largest wait, in seconds.
    """

    base: float = 1.0
    cap: float = 300.0

    def delay(self, attempts: int, rng: random.Random) -> dt.timedelta:
        """How long to wait before attempt ``attempts + 1``."""
        ceiling = min(self.cap, self.base * 2 ** max(attempts - 1, 0))
        return dt.timedelta(seconds=rng.uniform(ceiling / 2, ceiling))


#: Events one housekeeping pass deletes at most (the rest go in the next passes), so
#: that a first pass over a large outbox holds the write lock only briefly.
PRUNE_BATCH = 5000


class EventDelivery:
    """The use cases of event delivery: subscribe a consumer, claim, settle, report, prune.

    Args:
        store: the database.
        clock: the source of "now".
        retention: how long an event whose every delivery is done is kept before
            :meth:`prune_settled` deletes it (``outbox_retention_days``).
    """

    def __init__(
        self, store: Store, clock: Clock, *, retention: dt.timedelta = dt.timedelta(days=30)
    ) -> None:
        self._store = store
        self._clock = clock
        self._retention = retention

    def prune_settled(self) -> int:
        """Delete settled events older than the retention, a batch at a time; how many.

        Part of ``fleetpki serve``'s housekeeping (every minute). An event some
        consumer has not had yet (pending, or failed and waiting for a retry) stays
        however old it is.
        """
        with self._store.transaction() as tx:
            return tx.events.prune_settled(self._clock() - self._retention, limit=PRUNE_BATCH)

    def register(self, consumer: str, event_types: Collection[str]) -> None:
        """Subscribe ``consumer`` to ``event_types``; events from now on get a delivery."""
        with self._store.transaction() as tx:
            tx.events.register_consumer(consumer, event_types, at=self._clock())

    def unregister(self, consumer: str) -> None:
        """Forget ``consumer`` and drop its undelivered events."""
        with self._store.transaction() as tx:
            tx.events.unregister_consumer(consumer)

    def claim(self, consumer: str, *, lease: dt.timedelta, limit: int) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries of ``consumer``."""
        with self._store.transaction() as tx:
            return list(tx.events.claim_due(consumer, now=self._clock(), lease=lease, limit=limit))

    def settle(
        self,
        outcomes: Collection[Outcome],
        backoff: Backoff,
        rng: random.Random,
        *,
        max_attempts: int | None = None,
    ) -> None:
        """Record outcomes: delivered; retried after the backoff or the peer's
        ``Retry-After``, whichever is longer; or failed for good when the error is
        permanent or ``max_attempts`` attempts were made.
        """
        if not outcomes:
            return
        now = self._clock()
        with self._store.transaction() as tx:
            for outcome in outcomes:
                delivery, error = outcome.delivery, outcome.error
                if error is None:
                    tx.events.mark_delivered(delivery.id, at=now)
                elif outcome.permanent or (
                    max_attempts is not None and delivery.attempts >= max_attempts
                ):
                    tx.events.mark_dead(delivery.id, error, at=now)
                else:
                    wait = backoff.delay(delivery.attempts, rng)
                    if outcome.retry_after is not None:
                        wait = max(wait, dt.timedelta(seconds=outcome.retry_after))
                    tx.events.mark_failed(delivery.id, error, retry_at=now + wait)

    def backlog(self, consumer: str) -> DeliveryBacklog:
        """What ``consumer`` still has to deliver, and what it gave up on."""
        with self._store.transaction() as tx:
            return tx.events.backlog(consumer)

    def failed(self, consumer: str, *, limit: int = 100) -> list[FailedDelivery]:
        """The deliveries ``consumer`` gave up on, oldest first, with their last error."""
        with self._store.transaction() as tx:
            return list(tx.events.failed(consumer, limit=limit))

    def retry_failed(self, consumer: str) -> int:
        """Requeue every failed delivery of ``consumer`` (due now, attempts from zero).

        Returns how many were requeued; the consumer's worker is woken on commit.
        """
        with self._store.transaction() as tx:
            count = tx.events.requeue_failed(consumer, at=self._clock())
            if count:
                tx.publish(EventsWritten())
            return count


class ConsumerWorker:
    """One consumer's delivery loop in a thread of its own (see the module docstring).

    Args:
        delivery: the delivery use cases.
        bus: the application's event bus (wakes the worker when events commit).
        consumer: the consumer's name, unique per hub node or hub link.
        event_types: the event types it takes.
        handler: delivers one event; raises to have it retried.
        poll: the longest sleep between two looks at the outbox.
        lease: how long a claimed delivery is this worker's.
        backoff: retry timing for failed deliveries.
        batch: deliveries claimed per transaction.
        max_attempts: attempts before a delivery is given up on as failed (``None``:
            retry for ever, as the built-in hub's own consumer does).
    """

    def __init__(
        self,
        delivery: EventDelivery,
        bus: EventBus,
        consumer: str,
        event_types: Collection[str],
        handler: Handler,
        *,
        poll: float = DEFAULT_POLL,
        lease: dt.timedelta = dt.timedelta(seconds=60),
        backoff: Backoff | None = None,
        batch: int = 100,
        max_attempts: int | None = None,
    ) -> None:
        self.consumer = consumer
        self._max_attempts = max_attempts
        self.event_types = frozenset(event_types)
        self._delivery = delivery
        self._bus = bus
        self._handler = handler
        self._poll = poll
        self._lease = lease
        self._backoff = backoff or Backoff()
        self._batch = batch
        self._rng = random.Random()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._unavailable = False
        self._thread = threading.Thread(
            target=self._run, name=f"fleetpki-consumer-{consumer}", daemon=True
        )

    def start(self) -> None:
        """Register the consumer, listen for commits and start the loop (it runs once at once)."""
        self._delivery.register(self.consumer, self.event_types)
        self._bus.subscribe(self._on_notification)
        self._wake.set()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop; waits at most ``timeout`` for a delivery in progress."""
        self._bus.unsubscribe(self._on_notification)
        self._stopped.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wake(self) -> None:
        """Look at the outbox now."""
        self._wake.set()

    def _on_notification(self, notification: Notification) -> None:
        if isinstance(notification, EventsWritten) and (
            not notification.event_types or notification.event_types & self.event_types
        ):
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self._poll)
            self._wake.clear()
            try:
                while not self._stopped.is_set() and self.run_once() == self._batch:
                    pass
            except UnavailableError as exc:
                # One line when the database stops answering and one when it is back,
                # not a traceback per poll.
                if not self._unavailable:
                    self._unavailable = True
                    _log.warning(
                        "consumer %s: %s; retrying every %.1f s", self.consumer, exc, self._poll
                    )
                self._stopped.wait(self._poll)
            except Exception:
                _log.exception("consumer %s: delivery failed; retrying", self.consumer)
                self._stopped.wait(self._poll)
            else:
                if self._unavailable:
                    self._unavailable = False
                    _log.warning("consumer %s: the database answers again", self.consumer)

    def run_once(self) -> int:
        """Claim, deliver and settle one batch; returns how many deliveries it claimed.

        Each failure is logged at DEBUG and the batch's failures once at WARNING, so a
        hub that is down for an hour does not write a line per queued event per retry.
        """
        claimed = self._delivery.claim(self.consumer, lease=self._lease, limit=self._batch)
        outcomes: list[Outcome] = []
        for item in claimed:
            try:
                self._handler(item)
            except DeliveryFailed as exc:
                outcomes.append(
                    Outcome(item, str(exc), retry_after=exc.retry_after, permanent=exc.permanent)
                )
            except Exception as exc:
                outcomes.append(Outcome(item, f"{type(exc).__name__}: {exc}"))
            else:
                outcomes.append(Outcome(item))
                continue
            _log.debug(
                "consumer %s: event %d (%s) failed, attempt %d: %s",
                self.consumer,
                item.event_id,
                item.event_type,
                item.attempts,
                outcomes[-1].error,
            )
        failures = [o for o in outcomes if o.error is not None]
        if failures:
            first = failures[0]
            _log.warning(
                "consumer %s: %d of %d deliveries failed (%d permanently); first: event %d "
                "(%s), attempt %d: %s",
                self.consumer,
                len(failures),
                len(outcomes),
                sum(1 for o in failures if o.permanent),
                first.delivery.event_id,
                first.delivery.event_type,
                first.delivery.attempts,
                first.error,
            )
        self._delivery.settle(outcomes, self._backoff, self._rng, max_attempts=self._max_attempts)
        return len(claimed)
