"""Raw database access for tests: arrange states no use case makes, count rows.

The application's use cases are its services' methods; tests reach the session of a
unit of work only to set up unusual states or to show that a refused request wrote
nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fleetpki.application import FleetPKI

__all__ = ["raw_session"]


@contextmanager
def raw_session(fleet: FleetPKI) -> Iterator[Any]:
    """The SQLAlchemy session of one unit of work of ``fleet`` (committed on success)."""
    with fleet.store.transaction() as unit:
        yield unit.session  # type: ignore[attr-defined]
