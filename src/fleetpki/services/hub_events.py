"""In-process notifications from the hub's control plane to the live hub, sent after commit.

The registry and trust functions run inside a caller's transaction, so they cannot
tell the live hub at once: a rolled-back disable must not close a session. They
queue a notification on the session with :func:`notify_after_commit`, and a
SQLAlchemy ``after_commit`` hook hands queued notifications to every registered
:class:`HubEventListener` once the transaction is durable; a rollback drops them.

Revocation is written by ``services.certificates.revoke`` as a ``certificate.revoked``
outbox event. A flush hook spots such events too, so that a revocation made in this
process reaches the hub right after its commit (well under a second); the outbox
consumer in ``services.hub_registry`` (:func:`~fleetpki.services.hub_registry.deliver_revocations`)
covers revocations made by other processes, such as the CLI.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from fleetpki.services.outbox import CERTIFICATE_REVOKED
from fleetpki.store.models import OutboxEvent

__all__ = [
    "C2DQueued",
    "CertificateRevoked",
    "DesiredPatched",
    "DeviceBlocked",
    "HubEventListener",
    "HubNotification",
    "TrustChanged",
    "add_listener",
    "dispatch",
    "notify_after_commit",
    "remove_listener",
]

_log = logging.getLogger(__name__)
_PENDING_KEY = "fleetpki.hub_events.pending"


@dataclass(frozen=True, slots=True)
class DeviceBlocked:
    """A device was disabled or deleted: close its session, refuse it from now on."""

    device_id: str
    reason: str = "hub.device_disabled"


@dataclass(frozen=True, slots=True)
class CertificateRevoked:
    """A certificate was revoked: close sessions that use it (serial and SHA-1 upper hex)."""

    serial: str
    sha1: str | None = None
    ca_id: str | None = None
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class DesiredPatched:
    """Desired twin properties changed; ``patch`` holds the changed keys (``None`` deletes)."""

    device_id: str
    patch: Mapping[str, Any] = field(default_factory=dict)
    version: int = 1


@dataclass(frozen=True, slots=True)
class C2DQueued:
    """A cloud-to-device message was queued for ``device_id``."""

    device_id: str


@dataclass(frozen=True, slots=True)
class TrustChanged:
    """The set of hub CAs changed (upload, verification, deletion)."""


HubNotification = DeviceBlocked | CertificateRevoked | DesiredPatched | C2DQueued | TrustChanged


class HubEventListener:
    """Receives hub notifications; subclass and override what you need.

    Methods are called from whichever thread committed the change and must not block.
    """

    def on_device_blocked(self, device_id: str, reason: str) -> None:
        """A device was disabled or deleted."""

    def on_certificate_revoked(self, serial: str, sha1: str | None) -> None:
        """A certificate was revoked."""

    def on_desired_patched(self, device_id: str, patch: Mapping[str, Any], version: int) -> None:
        """Desired twin properties changed."""

    def on_c2d_queued(self, device_id: str) -> None:
        """A cloud-to-device message is waiting."""

    def on_trust_changed(self) -> None:
        """Hub CAs changed."""


_listeners: list[HubEventListener] = []
_lock = threading.Lock()


def add_listener(listener: HubEventListener) -> None:
    """Have ``listener`` told about every notification committed from now on."""
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: HubEventListener) -> None:
    """Stop telling ``listener``; unknown listeners are ignored."""
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def dispatch(notification: HubNotification) -> None:
    """Hand one notification to every listener now; a failing listener is logged, not raised."""
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            match notification:
                case DeviceBlocked(device_id, reason):
                    listener.on_device_blocked(device_id, reason)
                case CertificateRevoked(serial, sha1):
                    listener.on_certificate_revoked(serial, sha1)
                case DesiredPatched(device_id, patch, version):
                    listener.on_desired_patched(device_id, patch, version)
                case C2DQueued(device_id):
                    listener.on_c2d_queued(device_id)
                case TrustChanged():
                    listener.on_trust_changed()
        except Exception:
            _log.exception("hub listener %r failed on %s", listener, type(notification).__name__)


def notify_after_commit(session: Session, notification: HubNotification) -> None:
    """Queue ``notification`` to be dispatched when ``session`` commits (dropped on rollback)."""
    session.info.setdefault(_PENDING_KEY, []).append(notification)


@event.listens_for(Session, "after_flush")
def _spot_revocations(session: Session, _context: Any) -> None:
    # In after_flush, session.new still lists the objects just inserted.
    for obj in session.new:
        if isinstance(obj, OutboxEvent) and obj.event_type == CERTIFICATE_REVOKED:
            payload = obj.payload
            notify_after_commit(
                session,
                CertificateRevoked(
                    serial=str(payload.get("serial", obj.subject_id)),
                    sha1=payload.get("sha1"),
                    ca_id=payload.get("ca_id"),
                    device_id=payload.get("device_id"),
                ),
            )


@event.listens_for(Session, "after_commit")
def _dispatch_pending(session: Session) -> None:
    pending: list[HubNotification] = session.info.pop(_PENDING_KEY, [])
    for notification in pending:
        dispatch(notification)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)
