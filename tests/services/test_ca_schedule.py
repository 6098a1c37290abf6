"""Scheduled CA work: renewal at a fraction of the lifetime, and links overdue.

The application runs on a clock the test moves, as ``fleetpki serve`` would run the
same two calls every minute.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetpki.application import FleetPKI, init_home
from fleetpki.errors import ValidationError
from fleetpki.services import Actor
from fleetpki.services.authority import HierarchySpec
from fleetpki.services.ca_lifecycle import RenewCommand
from fleetpki.services.hub_links import link_command
from fleetpki.settings import Settings
from support.hub_control import issuing_ca

ADMIN = Actor.local_admin()


class MovableClock:
    """A clock that stands still until the test moves it."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


def _fleet(
    tmp_path: Path, database_url: str, clock: MovableClock, spec: HierarchySpec, **settings: object
) -> FleetPKI:
    config = Settings.default_for(tmp_path / "home", database_url).with_changes(**settings)
    return init_home(config, spec, clock=clock).app


@pytest.fixture
def scheduled(
    tmp_path: Path, database_url: str, key_passphrase: None, clock: MovableClock
) -> Iterator[FleetPKI]:
    app = _fleet(
        tmp_path, database_url, clock, HierarchySpec(root_days=3650, issuing_days=100),
        ca_auto_renew_at=0.5,
    )  # fmt: skip
    yield app
    app.close()


def test_a_ca_is_renewed_once_half_its_lifetime_has_passed(
    scheduled: FleetPKI, clock: MovableClock
) -> None:
    ca = issuing_ca(scheduled)
    clock.advance(days=49)
    assert scheduled.ca_schedule.renew_due() == []
    clock.advance(days=2)
    [renewed] = scheduled.ca_schedule.renew_due()
    assert (renewed.ca_id, renewed.number, renewed.state) == (ca.id, 2, "active")
    assert renewed.not_after - renewed.not_before >= dt.timedelta(days=100)
    # The new generation starts the count again: nothing is due a minute later.
    clock.advance(minutes=1)
    assert scheduled.ca_schedule.renew_due() == []
    [entry] = [e for e in scheduled.audit.latest(ADMIN, object_id=ca.id) if e.action == "ca.renew"]
    assert entry.source == "ca schedule"


def test_automatic_renewal_is_off_by_default(
    tmp_path: Path, database_url: str, key_passphrase: None, clock: MovableClock
) -> None:
    app = _fleet(tmp_path, database_url, clock, HierarchySpec(issuing_days=100))
    try:
        clock.advance(days=99)
        assert app.ca_schedule.due() == []
        assert app.ca_schedule.renew_due() == []
        assert [g.number for g in app.ca_lifecycle.generations(issuing_ca(app).id)] == [1]
    finally:
        app.close()


def test_an_issuing_ca_waits_for_its_parent_when_the_parent_expires_first(
    tmp_path: Path,
    database_url: str,
    key_passphrase: None,
    clock: MovableClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = _fleet(
        tmp_path, database_url, clock, HierarchySpec(root_days=100, issuing_days=100),
        ca_auto_renew_at=0.5,
    )  # fmt: skip
    try:
        root = next(c for c in app.cas.list() if c.tier == "root")
        issuing = issuing_ca(app)
        clock.advance(days=60)
        with caplog.at_level(logging.WARNING, logger="fleetpki.ca"):
            assert app.ca_schedule.due() == [root.id]
        assert "its parent expires first" in caplog.text
        [renewed_root] = app.ca_schedule.renew_due()
        assert renewed_root.ca_id == root.id
        # The root now outlives the issuing CA: the issuing CA is renewed next.
        [renewed] = app.ca_schedule.renew_due()
        assert (renewed.ca_id, renewed.state) == (issuing.id, "active")
    finally:
        app.close()


def test_a_generation_waiting_past_the_deadline_is_reported_hourly(
    scheduled: FleetPKI, clock: MovableClock, caplog: pytest.LogCaptureFixture
) -> None:
    ca = issuing_ca(scheduled)
    scheduled.hub_links.add(ADMIN, link_command("far-hub", "builtin", ca_ids=[ca.id]))
    pending = scheduled.ca_lifecycle.renew(ADMIN, ca.id, RenewCommand())
    assert pending.state == "pending" and not pending.overdue
    clock.advance(hours=23)
    assert scheduled.ca_schedule.report_overdue() == []
    clock.advance(hours=2)
    with caplog.at_level(logging.WARNING, logger="fleetpki.ca"):
        [overdue] = scheduled.ca_schedule.report_overdue()
        assert scheduled.ca_schedule.report_overdue() == [overdue]  # logged once an hour
    assert overdue.overdue and overdue.pending_links == ("far-hub",)
    lines = [r.getMessage() for r in caplog.records if "has waited" in r.getMessage()]
    assert len(lines) == 1 and "far-hub" in lines[0] and "--force" in lines[0]
    assert scheduled.ca_lifecycle.generations(ca.id)[-1].overdue
    # While it waits the CA is not due for another renewal either.
    clock.advance(days=60)
    assert scheduled.ca_schedule.due() == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ca_auto_renew_at", 1.0),
        ("ca_auto_renew_at", -0.1),
        ("ca_auto_renew_at", True),
        ("ca_rekey_after_days", 0),
        ("ca_link_deadline_hours", "24"),
    ],
)
def test_bad_schedule_settings_are_refused(tmp_path: Path, name: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.default_for(tmp_path).with_changes(**{name: value})
    assert info.value.code == "config.invalid" and name in info.value.message
