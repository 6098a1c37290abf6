"""The database-backed `HubBackend`: the MQTT server's view of the hub's control plane.

Each call opens one transaction on the fleetpki database and calls the services
(`fleetpki.services.hub_registry`, `hub_messages`); control-plane notifications
(`fleetpki.services.hub_events`) are translated into the broker's `HubEvent` types.
A background thread runs the outbox consumer for ``certificate.revoked`` every
``revocation_poll`` seconds, so revocations made by other processes (the CLI, another
API node) also close live sessions; those made in this process arrive at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509

from fleetpki.hub.backend import (
    AuthenticatedDevice,
    C2DMessage,
    C2DQueued,
    CertificateRevoked,
    DesiredPatched,
    DeviceBlocked,
    HubListener,
    TelemetryRecord,
    Twin,
)
from fleetpki.services import foreign_revocation, hub_events, hub_messages, hub_registry
from fleetpki.services.app import FleetPKI
from fleetpki.services.hub_methods import attach_method_invoker, device_not_online

__all__ = ["BrokerMethodInvoker", "StoreHubBackend"]

_log = logging.getLogger(__name__)

#: Seconds between runs of the outbox consumer for revocations from other processes.
DEFAULT_REVOCATION_POLL = 0.5


class _Bridge(hub_events.HubEventListener):
    """Turns control-plane notifications into the broker's events."""

    def __init__(self, listener: HubListener) -> None:
        self.listener = listener

    def on_device_blocked(self, device_id: str, reason: str) -> None:
        self.listener(DeviceBlocked(device_id, reason))

    def on_certificate_revoked(self, serial: str, sha1: str | None) -> None:
        self.listener(CertificateRevoked(sha1=sha1, serial=serial))

    def on_desired_patched(self, device_id: str, patch: Mapping[str, Any], version: int) -> None:
        self.listener(DesiredPatched(device_id, patch, version))

    def on_c2d_queued(self, device_id: str) -> None:
        self.listener(C2DQueued(device_id))


class BrokerMethodInvoker:
    """Adapts a broker's ``invoke_method`` to `fleetpki.services.hub_methods.MethodInvoker`.

    The broker may run on another event loop than the caller (the API), so calls
    cross loops through a worker thread.
    """

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    async def invoke(
        self, device_id: str, method: str, payload: Any, timeout: float
    ) -> tuple[int, Any]:
        """Call ``method`` on the device; see `MethodInvoker.invoke`."""
        broker_loop = getattr(self.broker, "_loop", None)
        if broker_loop is None:
            raise device_not_online(device_id)
        if broker_loop is asyncio.get_running_loop():
            result = await self.broker.invoke_method(device_id, method, payload, timeout)
        else:
            result = await asyncio.to_thread(
                self.broker.invoke_method_threadsafe, device_id, method, payload, timeout
            )
        return int(result.status), result.payload

    def connected_device_count(self) -> int:
        """Devices connected to the broker now."""
        count = self.broker.connected_device_count  # a property on the broker
        return int(count() if callable(count) else count)


class StoreHubBackend:
    """A `HubBackend` on the fleetpki database.

    Args:
        fleet: the opened fleetpki instance (its database and clock).
        revocation_poll: seconds between outbox checks for revocations made elsewhere.
    """

    def __init__(
        self, fleet: FleetPKI, *, revocation_poll: float = DEFAULT_REVOCATION_POLL
    ) -> None:
        self.fleet = fleet
        self.revocation_poll = revocation_poll
        foreign_revocation.configure(soft_fail=fleet.settings.hub_revocation_soft_fail)
        self._bridges: dict[HubListener, _Bridge] = {}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def authenticate(
        self,
        leaf: x509.Certificate,
        chain: Sequence[x509.Certificate],
        client_id: str,
        now: dt.datetime,
    ) -> AuthenticatedDevice:
        """See `fleetpki.services.hub_registry.authenticate_device`."""
        with self.fleet.transaction() as session:
            device = hub_registry.authenticate_device(session, leaf, chain, client_id, now)
        return AuthenticatedDevice(
            device_id=device.device_id,
            certificate_sha1=device.certificate_sha1,
            certificate_serial=device.certificate_serial,
            module_id=device.module_id,
        )

    def store_telemetry(self, batch: Sequence[TelemetryRecord]) -> None:
        """Store a batch in one transaction; returns once it is committed."""
        items = [
            hub_messages.TelemetryInput(
                device_id=record.device_id,
                module_id=record.module_id,
                enqueued_at=record.enqueued_at,
                body=record.payload,
                system_properties=record.system_properties,
                properties=record.application_properties,
            )
            for record in batch
        ]
        with self.fleet.transaction() as session:
            hub_messages.store_telemetry(session, items)

    def get_twin(self, device_id: str) -> Twin:
        """The device's desired and reported properties with their versions."""
        with self.fleet.transaction() as session:
            record = hub_registry.get_twin(session, device_id)
            return Twin(
                desired=dict(record.desired),
                reported=dict(record.reported),
                desired_version=record.desired_version,
                reported_version=record.reported_version,
            )

    def patch_reported(self, device_id: str, patch: Mapping[str, Any]) -> int:
        """Merge a reported patch; return the new reported ``$version``."""
        with self.fleet.transaction() as session:
            return hub_registry.patch_reported(session, device_id, patch, now=self.fleet.now())

    def pending_c2d(self, device_id: str) -> Sequence[C2DMessage]:
        """Undelivered cloud-to-device messages, oldest first."""
        with self.fleet.transaction() as session:
            return [
                C2DMessage(message_id=m.message_id, payload=m.body, properties=dict(m.properties))
                for m in hub_messages.pending_c2d(session, device_id)
            ]

    def mark_c2d_delivered(self, device_id: str, message_id: str) -> None:
        """Record the device's acknowledgement of a message."""
        with self.fleet.transaction() as session:
            hub_messages.mark_c2d_delivered(session, device_id, message_id, now=self.fleet.now())

    def add_listener(self, listener: HubListener) -> None:
        """Forward control-plane notifications to ``listener``; start the revocation poller.

        When the listener is a bound method of a broker (``broker._on_backend_event``),
        the broker is also attached as this process's direct-method invoker.
        """
        bridge = _Bridge(listener)
        self._bridges[listener] = bridge
        hub_events.add_listener(bridge)
        broker = getattr(listener, "__self__", None)
        if broker is not None and hasattr(broker, "invoke_method_threadsafe"):
            attach_method_invoker(BrokerMethodInvoker(broker))
        if self._poller is None:
            self._stop.clear()
            self._poller = threading.Thread(
                target=self._poll_revocations, name="fleetpki-hub-revocations", daemon=True
            )
            self._poller.start()

    def remove_listener(self, listener: HubListener) -> None:
        """Stop forwarding to ``listener``; the poller stops with the last one."""
        bridge = self._bridges.pop(listener, None)
        if bridge is not None:
            hub_events.remove_listener(bridge)
        if not self._bridges and self._poller is not None:
            self._stop.set()
            self._poller = None

    def _poll_revocations(self) -> None:
        while not self._stop.wait(self.revocation_poll):
            try:
                with self.fleet.transaction() as session:
                    hub_registry.deliver_revocations(session, now=self.fleet.now())
            except Exception:
                _log.exception("hub: delivering revocations failed; retrying")
