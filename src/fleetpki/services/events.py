"""The event bus: one per application object, handing committed notifications to listeners.

Units of work queue notifications (:meth:`UnitOfWork.publish`) and the store hands
them to the bus once the transaction is durable; a rollback drops them. Listeners are
plain callables subscribed on *this* bus, so two application objects in one process
(tests run several) never see each other's events, and nothing is registered at import.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fleetpki.services.notifications import (
    C2DQueued,
    CertificateRevoked,
    DesiredPatched,
    DeviceBlocked,
    DeviceKeysReplaced,
    EventsWritten,
    Notification,
    TrustChanged,
)

__all__ = ["EventBus", "HubEventListener", "Listener"]

_log = logging.getLogger(__name__)

Listener = Callable[[Notification], None]


class EventBus:
    """Synchronous in-process publish/subscribe of :data:`Notification` objects.

    Listeners run in the thread that committed (or that received a NOTIFY) and must
    not block; a failing listener is logged and does not stop the others.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with every notification published from now on."""
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def publish(self, notification: Notification) -> None:
        """Hand one notification to every listener now."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(notification)
            except Exception:
                _log.exception("listener %r failed on %s", listener, type(notification).__name__)

    def publish_all(self, notifications: Iterable[Notification]) -> None:
        """Publish several notifications in order."""
        for notification in notifications:
            self.publish(notification)


class HubEventListener:
    """A bus listener with one method per notification; subclass and override what you need."""

    def __call__(self, notification: Notification) -> None:
        """Route ``notification`` to its method."""
        match notification:
            case DeviceBlocked(device_id, reason):
                self.on_device_blocked(device_id, reason)
            case DeviceKeysReplaced(device_id, key_ids):
                self.on_device_keys_replaced(device_id, key_ids)
            case CertificateRevoked(serial, sha1):
                self.on_certificate_revoked(serial, sha1)
            case DesiredPatched(device_id, patch, version):
                self.on_desired_patched(device_id, patch, version)
            case C2DQueued(device_id):
                self.on_c2d_queued(device_id)
            case TrustChanged():
                self.on_trust_changed()
            case EventsWritten(event_types):
                self.on_events_written(event_types)

    def on_device_blocked(self, device_id: str, reason: str) -> None:
        """A device was disabled or deleted."""

    def on_device_keys_replaced(self, device_id: str, key_ids: frozenset[str]) -> None:
        """A sas device's keys were replaced; ``key_ids`` name the removed ones."""

    def on_certificate_revoked(self, serial: str, sha1: str | None) -> None:
        """A certificate was revoked."""

    def on_desired_patched(self, device_id: str, patch: Mapping[str, Any], version: int) -> None:
        """Desired twin properties changed."""

    def on_c2d_queued(self, device_id: str) -> None:
        """A cloud-to-device message is waiting."""

    def on_trust_changed(self) -> None:
        """Hub CAs changed."""

    def on_events_written(self, event_types: frozenset[str]) -> None:
        """Outbox events were committed."""
