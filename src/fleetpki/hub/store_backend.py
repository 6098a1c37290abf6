"""The database-backed `HubBackend`: the MQTT server's view of the hub's control plane.

Each call is one use case of the application's hub services (``fleet.hub_twins``,
``fleet.hub_messages``, ``fleet.hub_methods``, ``fleet.hub_authentication``), each its
own unit of work.
The broker calls these methods from its thread pools only, so none of this runs on
the event loop.

What concerns live sessions (a revoked certificate, from any route: CLI, ``/v1``, EZCA,
all of which end in ``services.certificates.revoke``; a disabled or deleted device; a
replaced symmetric key; a desired patch; a queued cloud-to-device message) may be
changed by any process on the database, while the session is held by one hub node. So
each of them travels through the outbox (DESIGN.md "Events and the outbox";
`fleetpki.services.hub_notices`): this hub node is the consumer
``hub:<settings.hub_node>`` of those events and has its own delivery of each
(`fleetpki.services.delivery.ConsumerWorker`), translated into the broker's `HubEvent`
types. Its worker is woken at once when such a change commits in this process, by
PostgreSQL LISTEN/NOTIFY when one commits in another process, and otherwise looks every
``revocation_poll`` seconds (SQLite).

Revocations, blocked devices and replaced keys also take a faster path: `_Bridge`
forwards them from the application's event bus as the commit returns when they are
committed in this very process, and from their broadcast (PostgreSQL NOTIFY,
`EventBroadcast`) when another process commits them. Closing is idempotent (a session
closed stays closed), so the outbox delivery that follows changes nothing; desired
patches and C2D, which the device would see twice, come through the outbox only.

The node announces itself in ``hub_nodes`` and renews its heartbeat with its
connected-device count (`fleetpki.services.hub_nodes`), so that other processes know
which nodes to ask for a direct method.

Device authentication is the application's
`fleetpki.services.hub_authentication.DeviceAuthenticator` (the one policy of
`fleetpki.hub.policy`), with the application's revocation checker for foreign CAs and
trust cache. Trust needs no event: the trust cache is checked against the ``hub_cas``
table on every connect, so a CA verified or deleted (here or in another process)
applies to the next connection without a restart.

Direct methods: the service API (`fleetpki.api.hub_service`) calls the process's
application's `fleetpki.services.hub_methods.HubMethodService`. `BrokerMethodInvoker`
adapts the broker's ``invoke_method`` / ``connected_device_count`` to its
``MethodInvoker``, and `StoreHubBackend.attach_broker` attaches it for as long as the
broker listens. A method called in another process for a device held here arrives as a
``hub.method_called`` delivery (`fleetpki.services.hub_method_relay`): this node claims
it, calls the device on the broker's loop and records the answer, without holding up
the consumer; a node that does not hold the device declines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509

from fleetpki.application import FleetPKI
from fleetpki.errors import UnavailableError
from fleetpki.hub.backend import (
    AuthenticatedDevice,
    C2DMessage,
    CertificateRevoked,
    ConnectionChange,
    DeviceBlocked,
    DeviceKeysReplaced,
    HubEvent,
    HubListener,
    SessionOpened,
    TelemetryRecord,
    Twin,
)
from fleetpki.hub.broker import Broker
from fleetpki.services.delivery import ConsumerWorker
from fleetpki.services.events import HubEventListener
from fleetpki.services.hub_authentication import DeviceAuthenticator
from fleetpki.services.hub_method_relay import RelayedCall
from fleetpki.services.hub_methods import (
    DeviceNotOnline,
    MethodResult,
    MethodTimeout,
    device_not_online,
)
from fleetpki.services.hub_nodes import HEARTBEAT_SECONDS, node_consumer
from fleetpki.services.hub_notices import HUB_NOTICE_TYPES, closing_event_of, hub_event_of
from fleetpki.services.notifications import EventBroadcast, Notification
from fleetpki.services.outbox import HUB_METHOD_CALLED, HUB_SESSION_OPENED
from fleetpki.services.ports.events import Delivery

__all__ = ["DEFAULT_REVOCATION_POLL", "BrokerMethodInvoker", "StoreHubBackend"]

_log = logging.getLogger(__name__)

#: Seconds between outbox checks for changes committed by other processes (SQLite, or
#: a lost PostgreSQL NOTIFY).
DEFAULT_REVOCATION_POLL = 0.5


class _Bridge(HubEventListener):
    """Forwards revocations, blocked devices and replaced keys at once (from any thread):
    this process's after their commit, and other processes' from their broadcast."""

    def __init__(self, listener: HubListener) -> None:
        self.listener = listener

    def __call__(self, notification: Notification) -> None:
        """Dispatch ``notification``; a broadcast of a close is forwarded as its event."""
        if isinstance(notification, EventBroadcast):
            event = closing_event_of(notification)
            if event is not None:
                self.listener(event)
            return
        super().__call__(notification)

    def on_device_blocked(self, device_id: str, reason: str) -> None:
        """Disabled (``hub.device_disabled``) or deleted (``hub.unknown_device``)."""
        self.listener(DeviceBlocked(device_id, reason))

    def on_device_keys_replaced(self, device_id: str, key_ids: frozenset[str]) -> None:
        """A sas device's keys were replaced: the sessions they signed close."""
        self.listener(DeviceKeysReplaced(device_id, key_ids))

    def on_certificate_revoked(self, serial: str, sha1: str | None) -> None:
        """A certificate was revoked: the broker closes sessions that use it."""
        self.listener(CertificateRevoked(sha1=sha1, serial=serial))


class BrokerMethodInvoker:
    """Adapts a `Broker` to `fleetpki.services.hub_methods.MethodInvoker`.

    The broker runs on its own loop (``loop``); the caller (an API route) may run on
    another one, as in tests, so the call then crosses loops without a thread.

    Args:
        broker: the started broker.
        loop: the loop the broker runs on.
        node: the hub node's name.
    """

    def __init__(self, broker: Broker, loop: asyncio.AbstractEventLoop, node: str) -> None:
        self.broker = broker
        self.loop = loop
        self._node = node

    @property
    def node(self) -> str:
        """The hub node this broker is."""
        return self._node

    async def invoke(
        self, device_id: str, method: str, payload: Any, timeout: float
    ) -> tuple[int, Any]:
        """Call ``method`` on the device and return its ``(status, payload)``.

        Raises:
            NotFoundError: ``hub.device_not_online`` (404103), also once the hub stopped.
            FleetPKIError: ``hub.method_timeout`` (504101).
        """
        if self.loop.is_closed():
            raise device_not_online(device_id)
        call = self.broker.invoke_method(device_id, method, payload, timeout)
        if asyncio.get_running_loop() is self.loop:
            result = await call
        else:
            try:
                future = asyncio.run_coroutine_threadsafe(call, self.loop)
            except RuntimeError:  # the hub's loop closed meanwhile
                call.close()
                raise device_not_online(device_id) from None
            result = await asyncio.wrap_future(future)
        return int(result.status), result.payload

    def holds(self, device_id: str) -> bool:
        """Whether the device's live session is on this broker."""
        return self.broker.is_connected(device_id)

    def connected_device_count(self) -> int:
        """Devices connected to the broker now."""
        return self.broker.connected_device_count


class _Heartbeat:
    """Renews this node's row in ``hub_nodes`` every few seconds, in a thread of its own."""

    def __init__(self, backend: StoreHubBackend, interval: float) -> None:
        self._backend = backend
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetpki-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        backend = self._backend
        unavailable = False
        while not self._stopped.wait(self._interval):
            try:
                others = backend.fleet.hub_nodes.beat(
                    backend.node, backend.instance, connected=backend.connected_count()
                )
                backend.others_live = bool(others)
            except UnavailableError as exc:
                # One line when the database stops answering and one when it is back,
                # not a traceback per beat (as the outbox consumers do).
                if not unavailable:
                    unavailable = True
                    _log.warning("hub node %s: heartbeat: %s; trying again", backend.node, exc)
            except Exception:
                _log.exception("hub node %s: heartbeat failed; trying again", backend.node)
            else:
                if unavailable:
                    unavailable = False
                    _log.warning("hub node %s: heartbeat: the database answers again", backend.node)


class StoreHubBackend:
    """A `HubBackend` on the fleetpki database.

    Args:
        fleet: the opened fleetpki instance (its database and clock).
        revocation_poll: seconds between outbox checks for changes made by other
            processes; changes committed in this process are delivered at once.
        authenticator: how devices are authenticated; by default the application's
            (``fleet.hub_authentication``).
        heartbeat: seconds between renewals of this node's heartbeat.
    """

    def __init__(
        self,
        fleet: FleetPKI,
        *,
        revocation_poll: float = DEFAULT_REVOCATION_POLL,
        authenticator: DeviceAuthenticator | None = None,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.fleet = fleet
        self.node = fleet.settings.hub_node
        self.instance = ""
        #: Whether another hub node beat lately (renewed with each heartbeat): only then
        #: is a new session announced (`open_session`).
        self.others_live = False
        self.revocation_poll = revocation_poll
        self.authenticator = authenticator or fleet.hub_authentication
        self._heartbeat_interval = heartbeat
        self._lock = threading.Lock()
        self._listeners: list[HubListener] = []
        self._bridges: dict[HubListener, _Bridge] = {}
        self._consumer: ConsumerWorker | None = None
        self._heartbeat: _Heartbeat | None = None
        self._invoker: BrokerMethodInvoker | None = None
        self._answers: set[concurrent.futures.Future[None]] = set()

    # -- HubBackend --

    def authenticate(
        self,
        leaf: x509.Certificate,
        chain: Sequence[x509.Certificate],
        client_id: str,
        now: dt.datetime,
    ) -> AuthenticatedDevice:
        """See `fleetpki.services.hub_authentication.DeviceAuthenticator.authenticate`."""
        return self.authenticator.authenticate(leaf, chain, client_id, now)

    def authenticate_token(
        self, token: str, client_id: str, host: str, now: dt.datetime
    ) -> AuthenticatedDevice:
        """See `DeviceAuthenticator.authenticate_token`."""
        return self.authenticator.authenticate_token(token, client_id, host, now)

    def open_session(self, client_id: str) -> int:
        """See `HubBackend.open_session`: announced only while another node runs, so a
        single node's connects write nothing."""
        if not self.others_live:
            return 0
        return self.fleet.hub_nodes.announce_session(self.node, client_id)

    def store_telemetry(self, batch: Sequence[TelemetryRecord]) -> None:
        """Store a batch in one transaction; returns once it is committed."""
        self.fleet.hub_messages.store_telemetry(batch)

    def record_connections(self, changes: Sequence[ConnectionChange]) -> None:
        """Record connects and disconnects (connectionState, connection state events) as
        this node's."""
        self.fleet.hub_devices.record_connections(changes, node=self.node)

    def get_twin(self, device_id: str) -> Twin:
        """The device's desired and reported properties with their versions."""
        twin = self.fleet.hub_twins.get(device_id)
        return Twin(
            desired=dict(twin.desired),
            reported=dict(twin.reported),
            desired_version=twin.desired_version,
            reported_version=twin.reported_version,
        )

    def patch_reported(self, device_id: str, patch: Mapping[str, Any]) -> int:
        """Merge a reported patch; return the new reported ``$version``."""
        return self.fleet.hub_twins.patch_reported(device_id, patch)

    def pending_c2d(self, device_id: str) -> Sequence[C2DMessage]:
        """Undelivered cloud-to-device messages, oldest first."""
        return [
            C2DMessage(message_id=m.message_id, payload=m.body, properties=dict(m.properties))
            for m in self.fleet.hub_messages.pending_c2d(device_id)
        ]

    def mark_c2d_delivered(self, device_id: str, message_id: str) -> None:
        """Record the device's acknowledgement of a message."""
        self.fleet.hub_messages.mark_c2d_delivered(device_id, message_id)

    def add_listener(self, listener: HubListener) -> None:
        """Forward hub events to ``listener``; with the first, join the hub nodes and start
        this node's outbox consumer and heartbeat."""
        bridge = _Bridge(listener)
        self.fleet.events.subscribe(bridge)  # before the consumer's first run
        with self._lock:
            self._listeners.append(listener)
            self._bridges[listener] = bridge
            start = self._consumer is None
        if start:
            self.instance = self.fleet.hub_nodes.join(self.node)
            self.others_live = any(n.name != self.node for n in self.fleet.hub_nodes.live())
            consumer = self.fleet.start_consumer(
                node_consumer(self.node),
                [*HUB_NOTICE_TYPES, HUB_METHOD_CALLED, HUB_SESSION_OPENED],
                self._deliver,
                poll=self.revocation_poll,
            )
            heartbeat = _Heartbeat(self, self._heartbeat_interval)
            heartbeat.start()
            with self._lock:
                self._consumer = consumer
                self._heartbeat = heartbeat

    def remove_listener(self, listener: HubListener) -> None:
        """Stop forwarding to ``listener``; with the last one, stop the consumer, the
        heartbeat and methods, and leave the hub nodes.

        Called by `Broker.stop` on the loop: the consumer's thread is joined for at most
        the end of a delivery in progress (one short transaction).
        """
        with self._lock:
            bridge = self._bridges.pop(listener, None)
            if listener in self._listeners:
                self._listeners.remove(listener)
            consumer = heartbeat = invoker = None
            if not self._bridges:
                consumer, self._consumer = self._consumer, None
                heartbeat, self._heartbeat = self._heartbeat, None
                invoker, self._invoker = self._invoker, None
        if bridge is not None:
            self.fleet.events.unsubscribe(bridge)
        if invoker is not None:
            self.fleet.hub_methods.detach(invoker)
        if consumer is not None:
            self.fleet.stop_consumer(consumer)
        if heartbeat is not None:
            heartbeat.stop()
            try:
                self.fleet.hub_nodes.leave(self.node, self.instance)
            except UnavailableError as exc:
                # The others forget it once its heartbeat is old (hub_nodes.live).
                _log.warning("hub node %s: could not record its stop: %s", self.node, exc)
            except Exception:
                _log.exception("hub node %s: could not record its stop", self.node)

    def connected_count(self) -> int:
        """Devices connected to this node now (0 before the broker is attached)."""
        invoker = self._invoker
        return invoker.connected_device_count() if invoker is not None else 0

    def _deliver(self, delivery: Delivery) -> None:
        """This node's delivery of a hub event: act on the sessions it holds."""
        if delivery.event_type == HUB_METHOD_CALLED:
            self._deliver_method(delivery)
            return
        event: HubEvent | None
        if delivery.event_type == HUB_SESSION_OPENED:
            node = str(delivery.payload.get("node", ""))
            if node == self.node:
                return  # this node's own announcement
            self.others_live = True
            event = SessionOpened(delivery.subject_id, node, delivery.event_id)
        else:
            event = hub_event_of(delivery)
        if event is None:
            return
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)

    # -- direct methods --

    def attach_broker(self, broker: Broker) -> BrokerMethodInvoker:
        """Make ``broker`` this process's direct-method invoker (call in its running loop).

        It is detached again when the broker stops (its listener is removed).
        """
        invoker = BrokerMethodInvoker(broker, asyncio.get_running_loop(), self.node)
        with self._lock:
            self._invoker = invoker
        self.fleet.hub_methods.attach(invoker)
        return invoker

    def _deliver_method(self, delivery: Delivery) -> None:
        """A method called elsewhere: claim it if the device is held here, else decline."""
        relay = self.fleet.hub_method_relay
        device_id = str(delivery.payload.get("device_id", ""))
        asked = delivery.payload.get("asked") or []
        if self.node not in asked:
            return
        invoker = self._invoker
        if invoker is None or invoker.loop.is_closed() or not invoker.holds(device_id):
            relay.decline(delivery.subject_id, self.node)
            return
        call = relay.claim(delivery.subject_id, self.node)
        if call is None:
            return
        try:
            future = asyncio.run_coroutine_threadsafe(self._answer(invoker, call), invoker.loop)
        except RuntimeError:  # the broker's loop closed meanwhile
            relay.finish(call.id, outcome="offline")
            return
        with self._lock:
            self._answers.add(future)
        future.add_done_callback(self._answers.discard)

    async def _answer(self, invoker: BrokerMethodInvoker, call: RelayedCall) -> None:
        """Call the device on the broker's loop; record what came of it."""
        relay = self.fleet.hub_method_relay
        result: MethodResult | None = None
        outcome = "answered"
        try:
            status, payload = await invoker.invoke(
                call.device_id, call.method_name, call.payload, max(call.timeout, 0.001)
            )
            result = MethodResult(status, payload)
        except DeviceNotOnline:
            outcome = "offline"
        except MethodTimeout:
            outcome = "timeout"
        except Exception:
            _log.exception("hub node %s: relayed method %s failed", self.node, call.id)
            outcome = "offline"
        await asyncio.to_thread(relay.finish, call.id, result=result, outcome=outcome)
