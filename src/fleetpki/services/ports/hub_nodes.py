"""The repositories of several hub nodes on one database: their heartbeats, relayed methods.

Implemented on SQL by :mod:`fleetpki.store.repositories.hub_nodes` and reached through
the unit of work (``tx.hub_nodes``, ``tx.hub_method_calls``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Protocol

from fleetpki.store.hub_models import HubMethodCall, HubNode

__all__ = ["HubMethodCallRepository", "HubNodeRepository"]


class HubNodeRepository(Protocol):
    """The hub nodes that run (or ran) on this database, one row each."""

    def get(self, name: str) -> HubNode | None:
        """The node ``name``, locked for this unit of work, or ``None``."""
        ...

    def add(self, node: HubNode) -> None:
        """Record a node (written at once)."""
        ...

    def delete(self, node: HubNode) -> None:
        """Forget a node."""
        ...

    def beating_since(self, since: dt.datetime) -> Sequence[HubNode]:
        """Nodes whose last heartbeat is at or after ``since``, by name."""
        ...

    def silent_before(self, before: dt.datetime) -> Sequence[HubNode]:
        """Nodes whose last heartbeat is before ``before``, by name."""
        ...


class HubMethodCallRepository(Protocol):
    """Direct methods on their way through the database to the node holding the device."""

    def add(self, call: HubMethodCall) -> None:
        """Record a new call (written at once)."""
        ...

    def get(self, call_id: str, *, for_update: bool = False) -> HubMethodCall | None:
        """The call ``call_id`` (locked for this unit of work when ``for_update``)."""
        ...

    def delete(self, call: HubMethodCall) -> None:
        """Remove a call."""
        ...

    def delete_expired(self, before: dt.datetime) -> int:
        """Remove calls whose deadline passed before ``before``; how many."""
        ...

    def changed(self, call_id: str) -> None:
        """Tell waiting callers in other processes that the call changed, at commit."""
        ...
