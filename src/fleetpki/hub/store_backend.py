"""The database-backed `HubBackend`: the MQTT server's view of the hub's control plane.

Each call is one use case of the application's hub services (``fleet.hub_twins``,
``fleet.hub_messages``, ``fleet.hub_methods``, ``fleet.hub_authentication``), each its
own unit of work.
The broker calls these methods from its thread pools only, so none of this runs on
the event loop.

Notifications from the control plane (published on the application's event bus,
``fleet.events``, after each commit from the committing thread) are translated into the
broker's `HubEvent` types by `_Bridge`: a revoked certificate (any route: CLI, ``/v1``,
EZCA, all of which end in ``services.certificates.revoke``), a disabled or deleted
device, a replaced symmetric key, a desired patch, a queued cloud-to-device message.

Revocations also travel through the outbox (DESIGN.md "Events and the outbox"): this
hub node is the consumer ``hub:<settings.hub_node>`` of ``certificate.revoked`` events
and has its own delivery of each (`fleetpki.services.delivery.ConsumerWorker`). Its
worker is woken at once when a revocation commits in this process, by PostgreSQL
LISTEN/NOTIFY when one commits in another process, and otherwise looks every
``revocation_poll`` seconds (SQLite). Delivery is idempotent: a session already closed
stays closed.

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
broker listens.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509

from fleetpki.application import FleetPKI
from fleetpki.hub.backend import (
    AuthenticatedDevice,
    C2DMessage,
    C2DQueued,
    CertificateRevoked,
    DesiredPatched,
    DeviceBlocked,
    DeviceKeysReplaced,
    HubListener,
    TelemetryRecord,
    Twin,
)
from fleetpki.hub.broker import Broker
from fleetpki.services.delivery import ConsumerWorker
from fleetpki.services.events import HubEventListener
from fleetpki.services.hub_authentication import DeviceAuthenticator
from fleetpki.services.hub_methods import device_not_online
from fleetpki.services.outbox import CERTIFICATE_REVOKED
from fleetpki.services.ports.events import Delivery
from fleetpki.services.ports.hub import TelemetryInput

__all__ = ["DEFAULT_REVOCATION_POLL", "BrokerMethodInvoker", "StoreHubBackend"]

_log = logging.getLogger(__name__)

#: Seconds between outbox checks for revocations committed by other processes.
DEFAULT_REVOCATION_POLL = 0.5


class _Bridge(HubEventListener):
    """Turns control-plane notifications into the broker's events (called from any thread)."""

    def __init__(self, listener: HubListener) -> None:
        self.listener = listener

    def on_device_blocked(self, device_id: str, reason: str) -> None:
        """Disabled (``hub.device_disabled``) or deleted (``hub.unknown_device``)."""
        self.listener(DeviceBlocked(device_id, reason))

    def on_device_keys_replaced(self, device_id: str, key_ids: frozenset[str]) -> None:
        """A sas device's keys were replaced: the sessions they signed close."""
        self.listener(DeviceKeysReplaced(device_id, key_ids))

    def on_certificate_revoked(self, serial: str, sha1: str | None) -> None:
        """A certificate was revoked: the broker closes sessions that use it."""
        self.listener(CertificateRevoked(sha1=sha1, serial=serial))

    def on_desired_patched(self, device_id: str, patch: Mapping[str, Any], version: int) -> None:
        """Desired twin properties changed."""
        self.listener(DesiredPatched(device_id, patch, version))

    def on_c2d_queued(self, device_id: str) -> None:
        """A cloud-to-device message waits for the device."""
        self.listener(C2DQueued(device_id))


class BrokerMethodInvoker:
    """Adapts a `Broker` to `fleetpki.services.hub_methods.MethodInvoker`.

    The broker runs on its own loop (``loop``); the caller (an API route) may run on
    another one, as in tests, so the call then crosses loops without a thread.

    Args:
        broker: the started broker.
        loop: the loop the broker runs on.
    """

    def __init__(self, broker: Broker, loop: asyncio.AbstractEventLoop) -> None:
        self.broker = broker
        self.loop = loop

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

    def connected_device_count(self) -> int:
        """Devices connected to the broker now."""
        return self.broker.connected_device_count

    def is_device_connected(self, device_id: str) -> bool:
        """Whether the device has a live, accepted connection to the broker now."""
        return self.broker.is_connected(device_id)


class StoreHubBackend:
    """A `HubBackend` on the fleetpki database.

    Args:
        fleet: the opened fleetpki instance (its database and clock).
        revocation_poll: seconds between outbox checks for revocations made by other
            processes; revocations committed in this process are delivered at once.
        authenticator: how devices are authenticated; by default the application's
            (``fleet.hub_authentication``).
    """

    def __init__(
        self,
        fleet: FleetPKI,
        *,
        revocation_poll: float = DEFAULT_REVOCATION_POLL,
        authenticator: DeviceAuthenticator | None = None,
    ) -> None:
        self.fleet = fleet
        self.revocation_poll = revocation_poll
        self.authenticator = authenticator or fleet.hub_authentication
        self._lock = threading.Lock()
        self._bridges: dict[HubListener, _Bridge] = {}
        self._consumer: ConsumerWorker | None = None
        self._invoker: BrokerMethodInvoker | None = None

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

    def store_telemetry(self, batch: Sequence[TelemetryRecord]) -> None:
        """Store a batch in one transaction; returns once it is committed."""
        items = [
            TelemetryInput(
                device_id=record.device_id,
                module_id=record.module_id,
                enqueued_at=record.enqueued_at,
                body=record.payload,
                system_properties=record.system_properties,
                properties=record.application_properties,
            )
            for record in batch
        ]
        self.fleet.hub_messages.store_telemetry(items)

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
        """Forward control-plane notifications to ``listener``; start the outbox consumer."""
        bridge = _Bridge(listener)
        self.fleet.events.subscribe(bridge)  # before the consumer's first run
        with self._lock:
            self._bridges[listener] = bridge
            start = self._consumer is None
        if start:
            consumer = self.fleet.start_consumer(
                f"hub:{self.fleet.settings.hub_node}",
                [CERTIFICATE_REVOKED],
                self._deliver_revocation,
                poll=self.revocation_poll,
            )
            with self._lock:
                self._consumer = consumer

    def remove_listener(self, listener: HubListener) -> None:
        """Stop forwarding to ``listener``; with the last one, stop the consumer and methods.

        Called by `Broker.stop` on the loop: the consumer's thread is joined for at most
        the end of a delivery in progress (one short transaction).
        """
        with self._lock:
            bridge = self._bridges.pop(listener, None)
            consumer = None
            invoker = None
            if not self._bridges:
                consumer, self._consumer = self._consumer, None
                invoker, self._invoker = self._invoker, None
        if bridge is not None:
            self.fleet.events.unsubscribe(bridge)
        if invoker is not None:
            self.fleet.hub_methods.detach(invoker)
        if consumer is not None:
            self.fleet.stop_consumer(consumer)

    def _deliver_revocation(self, delivery: Delivery) -> None:
        """This node's delivery of a ``certificate.revoked`` event: close matching sessions."""
        payload = delivery.payload
        event = CertificateRevoked(
            sha1=payload.get("sha1"), serial=str(payload.get("serial", delivery.subject_id))
        )
        with self._lock:
            listeners = list(self._bridges)
        for listener in listeners:
            listener(event)

    # -- direct methods --

    def attach_broker(self, broker: Broker) -> BrokerMethodInvoker:
        """Make ``broker`` this process's direct-method invoker (call in its running loop).

        It is detached again when the broker stops (its listener is removed).
        """
        invoker = BrokerMethodInvoker(broker, asyncio.get_running_loop())
        with self._lock:
            self._invoker = invoker
        self.fleet.hub_methods.attach(invoker)
        return invoker
