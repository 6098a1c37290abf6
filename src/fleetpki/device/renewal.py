"""When a device renews its certificate, and the background renewer that does it.

Renewal timing follows smallstep's ``ca/renew.go``: renew at a fraction of the lifetime
(two thirds by default) moved by a random jitter of up to a twentieth of the lifetime
either way, so a fleet enrolled in one batch does not renew in one burst. A template's
EZCA ``AutoRenewPercentage`` can stand in for the fraction.

The `Renewer` thread sleeps until that time, renews (a callable, usually
`fleetpki.device.enroller.Enroller.renew` wrapped by `renew_identity`), hands the new
identity to ``on_renewed`` (which saves it and reconnects), and starts over with the new
certificate. A failed renewal is retried every ``retry_interval`` (sooner when the
certificate is about to expire). Clock, randomness and waiting are injectable.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleetpki.device.clock import utc_now
from fleetpki.device.enroller import Enroller, renew_identity
from fleetpki.device.identity import DeviceDirectory, DeviceIdentity
from fleetpki.errors import ValidationError

if TYPE_CHECKING:
    from fleetpki.device.connection import DeviceClient

__all__ = [
    "DEFAULT_JITTER",
    "DEFAULT_RENEW_FRACTION",
    "MAX_RENEW_FRACTION",
    "RenewalPolicy",
    "Renewer",
    "start_auto_renewal",
]

_log = logging.getLogger("fleetpki.device.renewal")

#: Renew after two thirds of the lifetime (smallstep: ``renewBefore = period / 3``).
DEFAULT_RENEW_FRACTION = 2 / 3
#: Jitter of up to a twentieth of the lifetime either way (smallstep: ``period / 20``).
DEFAULT_JITTER = 1 / 20
#: The latest fraction accepted: some lifetime must remain to renew in and to retry.
MAX_RENEW_FRACTION = 0.95
_MIN_RENEW_FRACTION = 0.05


@dataclass(frozen=True, slots=True)
class RenewalPolicy:
    """Renew at ``fraction`` of the lifetime, plus or minus up to ``jitter`` of it.

    Attributes:
        fraction: in [0.05, 0.95].
        jitter: in [0, 0.05], and small enough that the renewal time stays strictly
            between the certificate's start and end.

    Raises:
        ValidationError: ``renewal.bad_policy`` for values outside those ranges.
    """

    fraction: float = DEFAULT_RENEW_FRACTION
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        if not _MIN_RENEW_FRACTION <= self.fraction <= MAX_RENEW_FRACTION:
            raise ValidationError(
                "renewal.bad_policy",
                f"the renewal fraction must be between {_MIN_RENEW_FRACTION} and "
                f"{MAX_RENEW_FRACTION}",
            )
        limit = min(DEFAULT_JITTER, self.fraction, 1 - self.fraction)
        if not 0 <= self.jitter <= limit or self.jitter >= 1 - self.fraction:
            raise ValidationError(
                "renewal.bad_policy", f"the jitter must be between 0 and {limit:.4f}"
            )

    @classmethod
    def from_percentage(cls, percentage: int) -> RenewalPolicy:
        """The policy for an EZCA ``AutoRenewPercentage`` (e.g. 80: renew at 80 %).

        The percentage is held to [5, 95]; the jitter shrinks near the ends so that the
        renewal time stays inside the lifetime.
        """
        fraction = min(max(percentage / 100, _MIN_RENEW_FRACTION), MAX_RENEW_FRACTION)
        jitter = min(DEFAULT_JITTER, fraction / 2, (1 - fraction) / 2)
        return cls(fraction, jitter)

    @classmethod
    def for_identity(cls, identity: DeviceIdentity) -> RenewalPolicy:
        """The template's percentage when enrollment recorded it, else the default."""
        percentage = identity.metadata.auto_renew_percentage
        return cls() if percentage is None else cls.from_percentage(percentage)

    def renewal_time(
        self, not_before: dt.datetime, not_after: dt.datetime, *, rng: random.Random
    ) -> dt.datetime:
        """When to renew a certificate valid from ``not_before`` to ``not_after``.

        The answer lies in ``[not_before + (f - j) * L, not_before + (f + j) * L]`` for the
        lifetime ``L``, and before ``not_after``.

        Raises:
            ValidationError: ``renewal.bad_lifetime`` when ``not_after`` is not after
            ``not_before``.
        """
        lifetime = not_after - not_before
        if lifetime <= dt.timedelta(0):
            raise ValidationError("renewal.bad_lifetime", "the certificate has no lifetime")
        offset = self.fraction + self.jitter * (2 * rng.random() - 1)
        return not_before + lifetime * offset


class Renewer:
    """A background thread that renews a device's certificate before it expires.

    Args:
        identity: the current identity.
        renew: makes a renewed identity from the current one (network call; may raise).
        on_renewed: called with each renewed identity on the renewer's thread (save it,
            reconnect with it); an exception there goes to ``on_error``, and the renewed
            identity is kept all the same.
        on_error: called with each renewal failure.
        policy: when to renew; `RenewalPolicy.for_identity` by default.
        clock: the current UTC time.
        rng: the jitter's randomness.
        wait: sleeps up to the given seconds and returns ``True`` if the renewer should
            stop; by default it waits on the renewer's stop event.
        retry_interval: the pause after a failed renewal (shortened near expiry).
    """

    def __init__(
        self,
        identity: DeviceIdentity,
        renew: Callable[[DeviceIdentity], DeviceIdentity],
        *,
        on_renewed: Callable[[DeviceIdentity], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        policy: RenewalPolicy | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        rng: random.Random | None = None,
        wait: Callable[[float], bool] | None = None,
        retry_interval: dt.timedelta = dt.timedelta(minutes=1),
    ) -> None:
        self._identity = identity
        self._renew = renew
        self._on_renewed = on_renewed
        self._on_error = on_error
        self._fixed_policy = policy
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._retry = retry_interval
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.failures = 0
        self.renewals = 0
        self.next_renewal = self._schedule(identity)

    @property
    def identity(self) -> DeviceIdentity:
        """The newest identity."""
        with self._lock:
            return self._identity

    def _schedule(self, identity: DeviceIdentity) -> dt.datetime:
        policy = self._fixed_policy or RenewalPolicy.for_identity(identity)
        return policy.renewal_time(identity.not_before, identity.not_after, rng=self._rng)

    def step(self) -> bool:
        """Wait for the next renewal time and renew once; ``False`` when told to stop.

        The thread runs this in a loop; tests call it directly.
        """
        while (now := self._clock()) < self.next_renewal:
            if self._wait((self.next_renewal - now).total_seconds()):
                return False
        if self._stop.is_set():
            return False
        current = self.identity
        try:
            renewed = self._renew(current)
        except Exception as exc:  # retried below; the caller learns through on_error
            self._failed(exc, current.device_id)
            remaining = current.not_after - self._clock()
            pause = min(self._retry, max(remaining / 4, dt.timedelta(seconds=1)))
            self.next_renewal = self._clock() + pause
            return True
        # The new certificate is adopted even if on_renewed fails (a save or reconnect
        # error): the old one stays valid, and renewing again would gain nothing.
        with self._lock:
            self._identity = renewed
        self.renewals += 1
        self.next_renewal = self._schedule(renewed)
        _log.info(
            "device %s renewed (serial %s); next renewal at %s",
            renewed.device_id,
            renewed.serial_hex,
            self.next_renewal.isoformat(),
        )
        if self._on_renewed is not None:
            try:
                self._on_renewed(renewed)
            except Exception as exc:
                self._failed(exc, renewed.device_id)
        return True

    def _failed(self, exc: Exception, device_id: str) -> None:
        self.failures += 1
        _log.warning("renewing device %s failed (%s)", device_id, type(exc).__name__)
        if self._on_error is not None:
            self._on_error(exc)

    def _run(self) -> None:
        while not self._stop.is_set() and self.step():
            pass

    def start(self) -> Renewer:
        """Start the background thread (a daemon); returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"fleetpki-renewer-{self._identity.device_id}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the thread to stop and wait for it (a renewal in flight finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Renewer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_auto_renewal(
    enroller: Enroller,
    client: DeviceClient,
    *,
    directory: DeviceDirectory | None = None,
    new_key: bool = True,
    **options: Any,
) -> Renewer:
    """Renew ``client``'s identity in the background: renew, save, reconnect.

    Args:
        enroller: renews through the CA (`renew_identity`).
        client: the live connection; it reconnects with each new certificate.
        directory: where each renewed identity is saved before the reconnect.
        new_key: a new key at each renewal (the default).
        options: further `Renewer` arguments (``policy``, ``clock``, ``on_error``...).

    Returns the started renewer; call `Renewer.stop` when done.
    """

    def renew(current: DeviceIdentity) -> DeviceIdentity:
        return renew_identity(enroller, current, new_key=new_key, directory=directory)

    return Renewer(client.identity, renew, on_renewed=client.reconnect, **options).start()
