"""Direct methods relayed through the database to the hub node that holds the session.

Theory of operation. A direct method (ref §3.4) reaches whichever process served the
service API's request; the device's session may be on another worker or another
machine. The caller (:meth:`MethodRelay.call`):

1. writes a ``hub_method_calls`` row naming the live hub nodes it asks
   (:mod:`fleetpki.services.hub_nodes`; its own node, which does not hold the device,
   left out) and a ``hub.method_called`` outbox event, in one unit of work; with no
   live node to ask the device is offline at once (404103);
2. waits for the row to change: woken by PostgreSQL NOTIFY on
   :data:`~fleetpki.store.repositories.hub_nodes.METHODS_CHANNEL` (the application's
   listener publishes :class:`~fleetpki.services.notifications.MethodCallChanged`),
   with a short poll as well (:data:`SQLITE_POLL` on SQLite, which has no NOTIFY);
3. returns the device's answer; raises 404103 when every node asked declined or the
   holder found the device not subscribed, 504101 when the deadline passes; and
   removes the row.

Each node's consumer gets the event (``fleetpki.hub.store_backend``): the node holding
the session claims the call (:meth:`MethodRelay.claim`, once: the first claim wins),
calls the device on its own loop with the time that remains and records the outcome
(:meth:`MethodRelay.finish`); every other node declines (:meth:`MethodRelay.decline`).
The consumer never waits for the device, so revocations behind a method are not held up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetpki.services.context import Clock
from fleetpki.services.events import EventBus
from fleetpki.services.hub_methods import MethodResult, MethodTimeout, device_not_online
from fleetpki.services.hub_nodes import HubNodeService
from fleetpki.services.notifications import MethodCallChanged, Notification
from fleetpki.services.outbox import HUB_METHOD_CALLED
from fleetpki.services.ports import Store
from fleetpki.store.hub_models import HubMethodCall

__all__ = [
    "POSTGRES_POLL",
    "RELAY_GRACE_SECONDS",
    "SQLITE_POLL",
    "MethodRelay",
    "RelayedCall",
]

_log = logging.getLogger(__name__)

#: Seconds between looks at a waiting call on SQLite (no NOTIFY there).
SQLITE_POLL = 0.05
#: Seconds between looks on PostgreSQL, should a NOTIFY be lost.
POSTGRES_POLL = 0.5
#: How long past the device's timeout the caller waits for the holder's record of it.
RELAY_GRACE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class RelayedCall:
    """A call a node has claimed: what to send the device, and the seconds left."""

    id: str
    device_id: str
    method_name: str
    payload: Any
    timeout: float


@dataclass(frozen=True, slots=True)
class _State:
    status: str
    waiting_for: frozenset[str]
    result: MethodResult | None


class MethodRelay:
    """Both ends of a relayed direct method: the caller's and the holding node's.

    Args:
        store: the database.
        clock: the source of "now".
        nodes: the live hub nodes.
        bus: the application's bus (wakes waiting callers on a NOTIFY).
        listen: makes sure this application hears NOTIFYs (PostgreSQL); called before
            a call is made.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        nodes: HubNodeService,
        bus: EventBus,
        *,
        listen: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._nodes = nodes
        self._listen = listen
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        bus.subscribe(self._on_notification)

    # -- the caller's end ---------------------------------------------------------------

    async def call(
        self,
        device_id: str,
        method_name: str,
        payload: Any,
        timeout: float,
        *,
        exclude: str | None = None,
    ) -> MethodResult:
        """Call ``method_name`` on whichever live node holds ``device_id``.

        Args:
            exclude: this process's own node (it does not hold the device).

        Raises:
            DeviceNotOnline: no live node holds the device's session (404103).
            MethodTimeout: no answer in ``timeout`` seconds (504101).
        """
        await asyncio.to_thread(self._listen)
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        call_id = str(uuid.uuid4())
        with self._lock:
            self._waiting[call_id] = (loop, wake)
        try:
            asked = await asyncio.to_thread(
                self._open, call_id, device_id, method_name, payload, timeout, exclude
            )
            if not asked:
                raise device_not_online(device_id)
            poll = SQLITE_POLL if self._store.dialect == "sqlite" else POSTGRES_POLL
            give_up = loop.time() + timeout + RELAY_GRACE_SECONDS
            while True:
                state = await asyncio.to_thread(self._state, call_id)
                if state is None:
                    raise device_not_online(device_id)
                if state.result is not None:
                    return state.result
                if state.status == "offline" or (
                    state.status == "pending" and not state.waiting_for
                ):
                    raise device_not_online(device_id)
                if state.status == "timeout":
                    raise MethodTimeout(device_id, method_name)
                left = give_up - loop.time()
                if left <= 0:
                    raise MethodTimeout(device_id, method_name)
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(poll, left))
        finally:
            with self._lock:
                self._waiting.pop(call_id, None)
            await asyncio.to_thread(self._close, call_id)

    def _open(
        self,
        call_id: str,
        device_id: str,
        method_name: str,
        payload: Any,
        timeout: float,
        exclude: str | None,
    ) -> list[str]:
        asked = [n.name for n in self._nodes.live() if n.name != exclude]
        if not asked:
            return []
        now = self._clock()
        with self._store.transaction() as tx:
            tx.hub_method_calls.add(
                HubMethodCall(
                    id=call_id,
                    device_id=device_id,
                    method_name=method_name,
                    payload=payload,
                    created_at=now,
                    deadline=now + dt.timedelta(seconds=timeout),
                    asked=asked,
                    declined_by=[],
                    claimed_by=None,
                    status="pending",
                )
            )
            tx.events.append(
                HUB_METHOD_CALLED, call_id, {"device_id": device_id, "asked": asked}, at=now
            )
        return asked

    def _state(self, call_id: str) -> _State | None:
        with self._store.transaction() as tx:
            call = tx.hub_method_calls.get(call_id)
            if call is None:
                return None
            result = None
            if call.status == "answered" and call.result_status is not None:
                result = MethodResult(call.result_status, call.result_payload)
            return _State(call.status, frozenset(call.asked) - frozenset(call.declined_by), result)

    def _close(self, call_id: str) -> None:
        with self._store.transaction() as tx:
            call = tx.hub_method_calls.get(call_id, for_update=True)
            if call is not None:
                tx.hub_method_calls.delete(call)

    def _on_notification(self, notification: Notification) -> None:
        if not isinstance(notification, MethodCallChanged):
            return
        with self._lock:
            waiting = self._waiting.get(notification.call_id)
        if waiting is not None:
            loop, wake = waiting
            if not loop.is_closed():
                loop.call_soon_threadsafe(wake.set)

    # -- the holding node's end ---------------------------------------------------------

    def claim(self, call_id: str, node: str) -> RelayedCall | None:
        """Take the call for ``node``, which holds the session; ``None`` if it is not
        (or no longer) for this node: gone, past its deadline, or claimed already."""
        now = self._clock()
        with self._store.transaction() as tx:
            call = tx.hub_method_calls.get(call_id, for_update=True)
            if (
                call is None
                or call.status != "pending"
                or node not in call.asked
                or call.deadline <= now
            ):
                return None
            call.status = "claimed"
            call.claimed_by = node
            tx.hub_method_calls.changed(call_id)
            return RelayedCall(
                call.id,
                call.device_id,
                call.method_name,
                call.payload,
                (call.deadline - now).total_seconds(),
            )

    def decline(self, call_id: str, node: str) -> None:
        """Record that ``node`` does not hold the call's device."""
        with self._store.transaction() as tx:
            call = tx.hub_method_calls.get(call_id, for_update=True)
            if call is None or node not in call.asked or node in call.declined_by:
                return
            call.declined_by = [*call.declined_by, node]
            tx.hub_method_calls.changed(call_id)

    def finish(
        self, call_id: str, *, result: MethodResult | None = None, outcome: str = "answered"
    ) -> None:
        """Record the device's answer, or ``outcome`` ``timeout`` / ``offline``."""
        with self._store.transaction() as tx:
            call = tx.hub_method_calls.get(call_id, for_update=True)
            if call is None:
                return  # the caller gave up and removed it
            call.status = outcome
            if result is not None:
                call.result_status = result.status
                call.result_payload = result.payload
            tx.hub_method_calls.changed(call_id)

    def sweep(self) -> int:
        """Remove calls whose caller is gone (deadline long past); part of housekeeping."""
        before = self._clock() - dt.timedelta(minutes=10)
        with self._store.transaction() as tx:
            return tx.hub_method_calls.delete_expired(before)
