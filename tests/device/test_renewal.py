"""Renewal timing (two thirds of the lifetime with jitter, or AutoRenewPercentage) and the renewer."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpki.device import DeviceIdentity, DeviceMetadata, RenewalPolicy, Renewer
from fleetpki.errors import FleetPKIError, ValidationError

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


class FixedRandom(random.Random):
    """A `random.Random` whose ``random()`` always answers ``value``."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("policy", "draw", "days", "expected_hours"),
    [
        # 30 days: 2/3 is day 20; the jitter moves it by up to 1.5 days either way.
        (RenewalPolicy(), 0.5, 30, 480.0),
        (RenewalPolicy(), 0.0, 30, 480.0 - 36.0),
        (RenewalPolicy(), 1.0, 30, 480.0 + 36.0),
        (RenewalPolicy(), 0.75, 30, 480.0 + 18.0),
        # 10 days (the tutorial): 2/3 is 160 h, jitter 12 h.
        (RenewalPolicy(), 0.5, 10, 160.0),
        (RenewalPolicy(), 0.0, 10, 148.0),
        # No jitter.
        (RenewalPolicy(jitter=0), 0.9, 30, 480.0),
        # EZCA's AutoRenewPercentage 80: day 8 of 10, jitter 12 h.
        (RenewalPolicy.from_percentage(80), 0.5, 10, 192.0),
        (RenewalPolicy.from_percentage(80), 1.0, 10, 204.0),
        # 50 %: jitter stays 1/20.
        (RenewalPolicy.from_percentage(50), 0.0, 20, 240.0 - 24.0),
    ],
)
def test_renewal_time_table(
    policy: RenewalPolicy, draw: float, days: int, expected_hours: float
) -> None:
    at = policy.renewal_time(T0, T0 + dt.timedelta(days=days), rng=FixedRandom(draw))
    assert at == T0 + dt.timedelta(hours=expected_hours)


@pytest.mark.parametrize(
    ("percentage", "fraction", "jitter"),
    [(80, 0.8, 0.05), (100, 0.95, 0.025), (99, 0.95, 0.025), (1, 0.05, 0.025), (90, 0.9, 0.05)],
)
def test_percentage_is_held_inside_the_lifetime(
    percentage: int, fraction: float, jitter: float
) -> None:
    policy = RenewalPolicy.from_percentage(percentage)
    assert policy.fraction == pytest.approx(fraction)
    assert policy.jitter == pytest.approx(jitter)


@pytest.mark.parametrize(
    ("fraction", "jitter"),
    [(0.0, 0.0), (1.0, 0.0), (0.97, 0.0), (0.5, 0.2), (0.5, -0.01), (0.96, 0.0)],
)
def test_bad_policies_are_refused(fraction: float, jitter: float) -> None:
    with pytest.raises(ValidationError) as caught:
        RenewalPolicy(fraction, jitter)
    assert caught.value.code == "renewal.bad_policy"


def test_a_certificate_without_lifetime_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        RenewalPolicy().renewal_time(T0, T0, rng=random.Random(1))
    assert caught.value.code == "renewal.bad_lifetime"


@settings(max_examples=300, deadline=None)
@given(
    lifetime_seconds=st.integers(min_value=60, max_value=20 * 365 * 86400),
    percentage=st.one_of(st.none(), st.integers(min_value=-10, max_value=150)),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_jitter_bounds(lifetime_seconds: int, percentage: int | None, seed: int) -> None:
    policy = RenewalPolicy() if percentage is None else RenewalPolicy.from_percentage(percentage)
    lifetime = dt.timedelta(seconds=lifetime_seconds)
    at = policy.renewal_time(T0, T0 + lifetime, rng=random.Random(seed))
    low = T0 + lifetime * (policy.fraction - policy.jitter)
    high = T0 + lifetime * (policy.fraction + policy.jitter)
    # timedelta arithmetic rounds to microseconds: allow one either way.
    tick = dt.timedelta(microseconds=1)
    assert low - tick <= at <= high + tick
    assert T0 < at < T0 + lifetime
    if percentage is None:
        assert policy.jitter == pytest.approx(1 / 20)
        assert abs((at - T0) / lifetime - 2 / 3) <= 1 / 20 + 1e-9


def test_jitter_spreads_a_fleet() -> None:
    policy = RenewalPolicy()
    rng = random.Random(7)
    times = {policy.renewal_time(T0, T0 + dt.timedelta(days=30), rng=rng) for _ in range(50)}
    assert len(times) == 50


# --------------------------------------------------------------------------- the renewer


def _identity(not_before: dt.datetime, days: float, serial: int = 1) -> DeviceIdentity:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-r")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return DeviceIdentity(key, certificate, (), (), DeviceMetadata("dev-r", "test"))


class FakeTime:
    """A clock that moves only when the renewer waits."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now
        self.waits: list[float] = []

    def clock(self) -> dt.datetime:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += dt.timedelta(seconds=seconds)
        return False


def test_renewer_renews_at_the_scheduled_times() -> None:
    time = FakeTime(T0)
    renewed_at: list[dt.datetime] = []
    saved: list[DeviceIdentity] = []

    def renew(current: DeviceIdentity) -> DeviceIdentity:
        renewed_at.append(time.now)
        return _identity(time.now, 30, current.certificate.serial_number + 1)

    renewer = Renewer(
        _identity(T0, 30),
        renew,
        on_renewed=saved.append,
        clock=time.clock,
        wait=time.wait,
        rng=FixedRandom(0.5),
    )
    assert renewer.next_renewal == T0 + dt.timedelta(days=20)
    for _ in range(3):
        assert renewer.step()
    # Each certificate lives 30 days from the renewal and is renewed at its 2/3 point.
    assert renewed_at == [T0 + dt.timedelta(days=20 * n) for n in (1, 2, 3)]
    assert [i.certificate.serial_number for i in saved] == [2, 3, 4]
    assert renewer.identity is saved[-1]
    assert renewer.renewals == 3
    assert renewer.failures == 0


def test_renewer_uses_the_recorded_auto_renew_percentage() -> None:
    time = FakeTime(T0)
    identity = _identity(T0, 10)
    identity = replace(identity, metadata=replace(identity.metadata, auto_renew_percentage=80))
    renewer = Renewer(identity, lambda i: i, clock=time.clock, wait=time.wait, rng=FixedRandom(0.5))
    assert renewer.next_renewal == T0 + dt.timedelta(days=8)


def test_renewer_retries_after_a_failure() -> None:
    time = FakeTime(T0)
    attempts: list[dt.datetime] = []
    errors: list[BaseException] = []

    def renew(current: DeviceIdentity) -> DeviceIdentity:
        attempts.append(time.now)
        if len(attempts) < 3:
            raise FleetPKIError("client.unreachable", "down")
        return _identity(time.now, 30, 2)

    renewer = Renewer(
        _identity(T0, 30),
        renew,
        on_error=errors.append,
        clock=time.clock,
        wait=time.wait,
        rng=FixedRandom(0.5),
        retry_interval=dt.timedelta(minutes=5),
    )
    for _ in range(3):
        assert renewer.step()
    first = T0 + dt.timedelta(days=20)
    assert attempts == [first, first + dt.timedelta(minutes=5), first + dt.timedelta(minutes=10)]
    assert [getattr(e, "code", None) for e in errors] == ["client.unreachable"] * 2
    assert renewer.failures == 2
    assert renewer.identity.certificate.serial_number == 2


def test_renewer_retries_sooner_near_expiry() -> None:
    time = FakeTime(T0 + dt.timedelta(days=30) - dt.timedelta(minutes=8))
    attempts: list[dt.datetime] = []

    def renew(current: DeviceIdentity) -> DeviceIdentity:
        attempts.append(time.now)
        raise FleetPKIError("client.unreachable", "down")

    renewer = Renewer(
        _identity(T0, 30),
        renew,
        clock=time.clock,
        wait=time.wait,
        rng=FixedRandom(0.5),
        retry_interval=dt.timedelta(hours=1),
    )
    for _ in range(3):
        renewer.step()
    # 8 minutes left: retry after a quarter of what remains, not after an hour.
    assert attempts[1] - attempts[0] == dt.timedelta(minutes=2)
    assert attempts[2] - attempts[1] == dt.timedelta(seconds=90)


def test_renewer_thread_stops() -> None:
    identity = _identity(dt.datetime.now(dt.UTC), 30)
    renewer = Renewer(identity, lambda i: i).start()
    renewer.stop(timeout=10)
    assert renewer.renewals == 0


def test_renewer_stops_when_the_wait_says_so() -> None:
    identity = _identity(T0, 30)
    renewer = Renewer(identity, lambda i: i, clock=lambda: T0, wait=lambda s: True)
    assert renewer.step() is False


def test_renewer_keeps_the_new_identity_when_on_renewed_fails() -> None:
    time = FakeTime(T0)
    errors: list[BaseException] = []

    def broken_save(_identity: DeviceIdentity) -> None:
        raise OSError("disk full")

    renewer = Renewer(
        _identity(T0, 30),
        lambda current: _identity(time.now, 30, 2),
        on_renewed=broken_save,
        on_error=errors.append,
        clock=time.clock,
        wait=time.wait,
        rng=FixedRandom(0.5),
    )
    assert renewer.step()
    assert renewer.identity.certificate.serial_number == 2
    assert renewer.renewals == 1
    assert renewer.failures == 1
    assert isinstance(errors[0], OSError)
    # The next renewal is scheduled from the new certificate, not retried at once.
    assert renewer.next_renewal == T0 + dt.timedelta(days=40)
