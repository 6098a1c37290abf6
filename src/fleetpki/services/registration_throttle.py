"""How often a device may register: Azure DPS's 429 with ``retry-after`` (ref §2)."""

from __future__ import annotations

import datetime as dt
import math
import threading

from fleetpki.errors import ThrottledError

__all__ = ["DEFAULT_REGISTER_INTERVAL", "RegistrationThrottle"]

#: Seconds a registration id must wait between two registrations (``Settings``).
DEFAULT_REGISTER_INTERVAL = 1.0


class RegistrationThrottle:
    """At most one registration per ``interval`` seconds per registration id, per process.

    A sooner one is refused with the whole seconds left as ``retry-after``, which the
    Azure SDK waits before it sends the request again (ref §2). Thread-safe.
    """

    def __init__(self, interval: float = DEFAULT_REGISTER_INTERVAL) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, dt.datetime] = {}

    def check(self, registration_id: str, now: dt.datetime) -> None:
        """Count a registration of ``registration_id`` now, or refuse it.

        Raises:
            ThrottledError: ``provisioning.throttled`` with ``retry_after``.
        """
        if self.interval <= 0:
            return
        with self._lock:
            last = self._last.get(registration_id)
            if last is not None:
                waited = (now - last).total_seconds()
                if 0 <= waited < self.interval:
                    retry_after = max(1, math.ceil(self.interval - waited))
                    raise ThrottledError(
                        "provisioning.throttled",
                        f"registration {registration_id!r} is registering too often; "
                        f"retry after {retry_after} s",
                        retry_after=retry_after,
                    )
            self._last[registration_id] = now
            if len(self._last) > 10_000:
                horizon = now - dt.timedelta(seconds=self.interval)
                self._last = {k: v for k, v in self._last.items() if v >= horizon}
