"""Events with a delivery per consumer: independence, retries with backoff, leases, the bus."""

from __future__ import annotations

import datetime as dt
import random

from fleetpki.application import FleetPKI
from fleetpki.services.delivery import Backoff, ConsumerWorker, EventDelivery
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
    fleet.delivery.settle([(first[0], None)], Backoff(), random.Random(1))
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
    delivery.settle([(claimed, "HubUnreachable: 503")], Backoff(base=10, cap=60), random.Random(2))
    backlog = delivery.backlog("flaky")
    assert (backlog.pending, backlog.failing, backlog.last_error) == (1, 1, "HubUnreachable: 503")
    assert delivery.claim("flaky", lease=LEASE, limit=10) == []  # backing off
    clock.now += dt.timedelta(seconds=10)  # the first retry waits at most `base`
    (again,) = delivery.claim("flaky", lease=LEASE, limit=10)
    assert (again.id, again.attempts) == (claimed.id, 2)
    delivery.settle([(again, None)], Backoff(), random.Random(3))
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
