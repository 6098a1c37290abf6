"""Events with a delivery per consumer: independence, retries with backoff, leases, the bus."""

from __future__ import annotations

import datetime as dt
import random

from fleetpki.application import FleetPKI
from fleetpki.services.delivery import (
    Backoff,
    ConsumerWorker,
    DeliveryFailed,
    EventDelivery,
    Outcome,
)
from fleetpki.services.notifications import EventsWritten, Notification, TrustChanged
from fleetpki.services.outbox import CERTIFICATE_REVOKED
from fleetpki.services.ports.events import Delivery

LEASE = dt.timedelta(seconds=30)


class MovableClock:
    """A clock the test moves by hand."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now


def _revoked(fleet: FleetPKI, serial: str) -> None:
    # A bare event, as a revocation's unit of work writes it, without a certificate to revoke.
    with fleet.store.transaction() as tx:
        tx.events.append(CERTIFICATE_REVOKED, serial, {"serial": serial}, at=fleet.now())


def test_each_consumer_has_its_own_delivery(fleet: FleetPKI) -> None:
    for name in ("hub:a", "link:b"):
        fleet.delivery.register(name, [CERTIFICATE_REVOKED])
    _revoked(fleet, "01")
    first = fleet.delivery.claim("hub:a", lease=LEASE, limit=10)
    assert [d.subject_id for d in first] == ["01"]
    fleet.delivery.settle([Outcome(first[0])], Backoff(), random.Random(1))
    # hub:a delivering took nothing from link:b.
    second = fleet.delivery.claim("link:b", lease=LEASE, limit=10)
    assert [(d.subject_id, d.event_id) for d in second] == [("01", first[0].event_id)]
    assert fleet.delivery.backlog("hub:a").pending == 0
    assert fleet.delivery.backlog("link:b").pending == 1


def test_only_subscribed_types_and_consumers_registered_before_the_event(
    fleet: FleetPKI,
) -> None:
    fleet.delivery.register("early", [CERTIFICATE_REVOKED])
    fleet.delivery.register("other-type", ["ca.renewed"])
    _revoked(fleet, "02")
    fleet.delivery.register("late", [CERTIFICATE_REVOKED])
    assert len(fleet.delivery.claim("early", lease=LEASE, limit=10)) == 1
    assert fleet.delivery.claim("other-type", lease=LEASE, limit=10) == []
    assert fleet.delivery.claim("late", lease=LEASE, limit=10) == []
    fleet.delivery.unregister("early")
    assert fleet.delivery.backlog("early").pending == 0


def test_a_failed_delivery_is_retried_after_its_backoff(fleet: FleetPKI) -> None:
    fleet.delivery.register("flaky", [CERTIFICATE_REVOKED])
    _revoked(fleet, "03")
    clock = MovableClock(fleet.now())
    delivery = EventDelivery(fleet.store, clock)
    (claimed,) = delivery.claim("flaky", lease=LEASE, limit=10)
    delivery.settle(
        [Outcome(claimed, "HubUnreachable: 503")], Backoff(base=10, cap=60), random.Random(2)
    )
    backlog = delivery.backlog("flaky")
    assert (backlog.pending, backlog.failing, backlog.last_error) == (1, 1, "HubUnreachable: 503")
    assert delivery.claim("flaky", lease=LEASE, limit=10) == []  # backing off
    clock.now += dt.timedelta(seconds=10)  # the first retry waits at most `base`
    (again,) = delivery.claim("flaky", lease=LEASE, limit=10)
    assert (again.id, again.attempts) == (claimed.id, 2)
    delivery.settle([Outcome(again)], Backoff(), random.Random(3))
    assert delivery.backlog("flaky").pending == 0


def test_a_lease_that_runs_out_gives_the_delivery_back(fleet: FleetPKI) -> None:
    """A worker that died between claiming and settling loses nothing."""
    fleet.delivery.register("crashy", [CERTIFICATE_REVOKED])
    _revoked(fleet, "04")
    clock = MovableClock(fleet.now())
    delivery = EventDelivery(fleet.store, clock)
    (claimed,) = delivery.claim("crashy", lease=LEASE, limit=10)
    assert delivery.claim("crashy", lease=LEASE, limit=10) == []  # leased to the first worker
    clock.now += LEASE
    (again,) = delivery.claim("crashy", lease=LEASE, limit=10)
    assert (again.id, again.attempts) == (claimed.id, 2)


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(4)
    backoff = Backoff(base=1, cap=8)
    delays = [backoff.delay(n, rng).total_seconds() for n in range(1, 8)]
    ceilings = [1, 2, 4, 8, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))


def test_a_worker_records_a_handler_failure_and_keeps_the_others(fleet: FleetPKI) -> None:
    seen: list[str] = []

    def handler(item: Delivery) -> None:
        if item.subject_id == "05":
            raise RuntimeError("hub said no")
        seen.append(item.subject_id)

    worker = ConsumerWorker(fleet.delivery, fleet.events, "mixed", [CERTIFICATE_REVOKED], handler)
    fleet.delivery.register("mixed", [CERTIFICATE_REVOKED])
    _revoked(fleet, "05")
    _revoked(fleet, "06")
    assert worker.run_once() == 2
    assert seen == ["06"]
    backlog = fleet.delivery.backlog("mixed")
    assert (backlog.pending, backlog.last_error) == (1, "RuntimeError: hub said no")


def test_a_permanent_failure_is_given_up_on_and_can_be_requeued(fleet: FleetPKI) -> None:
    def handler(item: Delivery) -> None:
        raise DeliveryFailed("link.not_found: no hub 'h1'", permanent=True)

    worker = ConsumerWorker(fleet.delivery, fleet.events, "gone", [CERTIFICATE_REVOKED], handler)
    fleet.delivery.register("gone", [CERTIFICATE_REVOKED])
    _revoked(fleet, "07")
    assert worker.run_once() == 1
    backlog = fleet.delivery.backlog("gone")
    assert (backlog.pending, backlog.failed) == (0, 1)
    assert backlog.last_error == "link.not_found: no hub 'h1'"
    (failed,) = fleet.delivery.failed("gone")
    assert (failed.subject_id, failed.attempts, failed.event_type) == ("07", 1, CERTIFICATE_REVOKED)
    assert worker.run_once() == 0  # given up on: not claimed again by itself
    assert fleet.delivery.retry_failed("gone") == 1
    assert fleet.delivery.failed("gone") == []
    (again,) = fleet.delivery.claim("gone", lease=LEASE, limit=10)
    assert (again.id, again.attempts) == (failed.id, 1)  # attempts start over


def test_a_delivery_fails_for_good_after_max_attempts(fleet: FleetPKI) -> None:
    fleet.delivery.register("bounded", [CERTIFICATE_REVOKED])
    _revoked(fleet, "08")
    clock = MovableClock(fleet.now())
    delivery = EventDelivery(fleet.store, clock)
    for attempt in (1, 2, 3):
        (claimed,) = delivery.claim("bounded", lease=LEASE, limit=10)
        assert claimed.attempts == attempt
        delivery.settle(
            [Outcome(claimed, "unreachable")],
            Backoff(base=1, cap=1),
            random.Random(attempt),
            max_attempts=3,
        )
        clock.now += dt.timedelta(seconds=1)
    backlog = delivery.backlog("bounded")
    assert (backlog.pending, backlog.failed) == (0, 1)
    assert delivery.claim("bounded", lease=LEASE, limit=10) == []


def test_retry_after_is_honoured_when_longer_than_the_backoff(fleet: FleetPKI) -> None:
    fleet.delivery.register("throttled", [CERTIFICATE_REVOKED])
    _revoked(fleet, "09")
    clock = MovableClock(fleet.now())
    delivery = EventDelivery(fleet.store, clock)
    (claimed,) = delivery.claim("throttled", lease=LEASE, limit=10)
    delivery.settle(
        [Outcome(claimed, "link.throttled", retry_after=30)], Backoff(base=1), random.Random(5)
    )
    clock.now += dt.timedelta(seconds=29)
    assert delivery.claim("throttled", lease=LEASE, limit=10) == []  # the backoff alone is <= 1 s
    clock.now += dt.timedelta(seconds=1)
    assert len(delivery.claim("throttled", lease=LEASE, limit=10)) == 1


def test_two_applications_do_not_see_each_others_events(fleet: FleetPKI) -> None:
    other = FleetPKI.open(fleet.settings)
    try:
        mine: list[Notification] = []
        theirs: list[Notification] = []
        fleet.events.subscribe(mine.append)
        other.events.subscribe(theirs.append)
        with other.store.transaction() as tx:
            tx.publish(TrustChanged())
        _revoked(fleet, "07")
        assert theirs == [TrustChanged()]
        assert mine == [EventsWritten(frozenset({CERTIFICATE_REVOKED}))]
    finally:
        other.close()


def test_a_rolled_back_unit_publishes_nothing(fleet: FleetPKI) -> None:
    seen: list[Notification] = []
    fleet.events.subscribe(seen.append)
    fleet.delivery.register("rb", [CERTIFICATE_REVOKED])
    try:
        with fleet.store.transaction() as tx:
            tx.publish(TrustChanged())
            tx.events.append(CERTIFICATE_REVOKED, "08", {}, at=fleet.now())
            raise RuntimeError("refused")
    except RuntimeError:
        pass
    assert seen == []
    assert fleet.delivery.backlog("rb").pending == 0


def test_settled_events_past_the_retention_are_pruned_and_unsettled_ones_stay(
    fleet: FleetPKI,
) -> None:
    clock = MovableClock(fleet.now())
    delivery = EventDelivery(fleet.store, clock, retention=dt.timedelta(days=30))

    def revoked(serial: str) -> None:
        with fleet.store.transaction() as tx:
            tx.events.append(CERTIFICATE_REVOKED, serial, {"serial": serial}, at=clock.now)

    def deliver_all(consumer: str) -> None:
        for claimed in delivery.claim(consumer, lease=LEASE, limit=10):
            delivery.settle([Outcome(claimed)], Backoff(), random.Random(5))

    for name in ("hub:a", "link:b"):
        fleet.delivery.register(name, [CERTIFICATE_REVOKED])
    revoked("old-done")
    revoked("old-pending")  # link:b is not given this one
    revoked("old-failed")  # link:b fails on it for good
    deliver_all("hub:a")
    by_subject = {d.subject_id: d for d in delivery.claim("link:b", lease=LEASE, limit=10)}
    delivery.settle([Outcome(by_subject["old-done"])], Backoff(), random.Random(6))
    delivery.settle(
        [Outcome(by_subject["old-failed"], "HubRefused: 400", permanent=True)],
        Backoff(),
        random.Random(7),
    )
    delivery.settle(
        [Outcome(by_subject["old-pending"], "HubUnreachable: 503")], Backoff(), random.Random(8)
    )
    clock.now += dt.timedelta(days=29)
    revoked("recent")
    deliver_all("hub:a")
    deliver_all("link:b")  # recent (and old-pending, due again by now) are delivered

    assert delivery.prune_settled() == 0  # nothing settled is 30 days old yet
    clock.now += dt.timedelta(days=2)
    # old-pending was settled only now, but its event is 31 days old: it goes too.
    assert delivery.prune_settled() == 2
    assert delivery.prune_settled() == 0

    with fleet.store.reading() as tx:
        left = {e.subject_id for e in tx.events.written_after(0, [CERTIFICATE_REVOKED], limit=10)}
        # A pruned event's deliveries went with it.
        assert tx.events.deliveries_of(CERTIFICATE_REVOKED, "old-done") == []
        states = tx.events.deliveries_of(CERTIFICATE_REVOKED, "old-failed")
    assert left == {"old-failed", "recent"}
    assert [(d.consumer, d.status) for d in states] == [("hub:a", "done"), ("link:b", "failed")]
    assert delivery.backlog("link:b").failed == 1
