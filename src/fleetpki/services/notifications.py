"""In-process notifications, handed to the application's event bus after a commit.

They tell live parts of this process (the hub's sessions, the event dispatchers) that
something changed, at once. They are not the durable record: a change that other
processes or hubs must learn is also written to the outbox in its transaction
(:mod:`fleetpki.services.ports.events`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "C2DQueued",
    "CertificateRevoked",
    "DesiredPatched",
    "DeviceBlocked",
    "DeviceKeysReplaced",
    "EventBroadcast",
    "EventsWritten",
    "HubLinksChanged",
    "MethodCallChanged",
    "Notification",
    "TrustChanged",
]


@dataclass(frozen=True, slots=True)
class DeviceBlocked:
    """A device was disabled or deleted: close its session, refuse it from now on."""

    device_id: str
    reason: str = "hub.device_disabled"


@dataclass(frozen=True, slots=True)
class DeviceKeysReplaced:
    """A sas device's keys changed: close its sessions signed by a key that is gone.

    ``key_ids`` are the removed keys' `fleetpki.hub.azure.sas.key_id` names.
    """

    device_id: str
    key_ids: frozenset[str] = frozenset()


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


@dataclass(frozen=True, slots=True)
class EventsWritten:
    """Outbox events committed (here, or in another process that notified us)."""

    event_types: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class HubLinksChanged:
    """A hub link was added or removed, or trusts another CA: its delivery must follow."""


@dataclass(frozen=True, slots=True)
class MethodCallChanged:
    """A relayed direct method was claimed, declined or answered (another process told us)."""

    call_id: str


@dataclass(frozen=True, slots=True)
class EventBroadcast:
    """An outbox event committed in another process, carried whole by its NOTIFY
    (``append(..., broadcast=True)``): for acting at once, before its delivery."""

    event_type: str
    subject_id: str
    payload: Mapping[str, Any]


Notification = (
    DeviceBlocked
    | DeviceKeysReplaced
    | CertificateRevoked
    | DesiredPatched
    | C2DQueued
    | TrustChanged
    | EventsWritten
    | HubLinksChanged
    | MethodCallChanged
    | EventBroadcast
)
