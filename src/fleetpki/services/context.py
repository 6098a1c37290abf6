"""What every use case is told: who acts, from where, and what time it is."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LOCAL_ADMIN_ID", "Actor", "Clock", "system_clock"]

Clock = Callable[[], dt.datetime]

#: The principal id of the operator who ran ``fleetpki init`` on this home.
LOCAL_ADMIN_ID = "00000000-0000-0000-0000-000000000001"


def system_clock() -> dt.datetime:
    """The current time in UTC."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class Actor:
    """The caller of a use case.

    Attributes:
        principal_id: a principal id, or ``certificate:<SHA-1>`` for a device that
            authenticated with its certificate.
        is_admin: admins may act on every object.
        source: where the call came from (``cli``, a client IP), for the audit log.
    """

    principal_id: str
    is_admin: bool = False
    source: str = "cli"

    @classmethod
    def local_admin(cls) -> Actor:
        """The operator at the CLI of a local home."""
        return cls(principal_id=LOCAL_ADMIN_ID, is_admin=True, source="cli")
