"""What the hub's MQTT side needs from the control plane: `HubBackend`, its records and events.

The broker (`fleetpki.hub.broker`) runs on the event loop and calls a backend only from
its thread pool, because every method may touch the database. A backend reports
changes that concern live connections (a revoked certificate, a disabled device, a
desired-properties patch, a queued cloud-to-device message) by calling the
`HubListener` it was given with `HubBackend.add_listener`, from any thread (a replaced
symmetric key too).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography import x509

from fleetpki.hub.policy import AuthenticatedDevice
from fleetpki.services.hub_devices import ConnectionChange
from fleetpki.services.notifications import (
    C2DQueued,
    CertificateRevoked,
    DesiredPatched,
    DeviceBlocked,
    DeviceKeysReplaced,
)
from fleetpki.services.ports.hub import TelemetryInput

__all__ = [
    "AuthenticatedDevice",
    "C2DMessage",
    "C2DQueued",
    "CertificateRevoked",
    "ConnectionChange",
    "DesiredPatched",
    "DeviceBlocked",
    "DeviceKeysReplaced",
    "HubBackend",
    "HubEvent",
    "HubListener",
    "SessionOpened",
    "TelemetryRecord",
    "Twin",
]


#: One device-to-cloud message as the hub stores it (ref §1.5, §1.6): the message
#: service's `TelemetryInput` itself (device and module, ``enqueued_at``, ``body``, the
#: decoded ``system_properties`` and application ``properties``), made once per PUBLISH
#: and handed on to the repository's insert unchanged.
TelemetryRecord = TelemetryInput


@dataclass(frozen=True, slots=True)
class Twin:
    """The device's twin properties, each with its ``$version`` (ref §1.5, §1.7)."""

    desired: Mapping[str, Any]
    reported: Mapping[str, Any]
    desired_version: int
    reported_version: int

    def document(self) -> dict[str, Any]:
        """The twin GET body: ``{"desired": {..., "$version": n}, "reported": {...}}``."""
        return {
            "desired": {**self.desired, "$version": self.desired_version},
            "reported": {**self.reported, "$version": self.reported_version},
        }


@dataclass(frozen=True, slots=True)
class C2DMessage:
    """A cloud-to-device message waiting for a device (ref §1.6).

    Attributes:
        message_id: its id, also ``$.mid`` on the wire and the tag of the in-flight QoS 1
            publish; `HubBackend.mark_c2d_delivered` is called with it after the PUBACK.
        properties: system properties by their short names (``$.cid``...) and application
            properties, sent in the property bag.
    """

    message_id: str
    payload: bytes
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """Another hub node accepted ``client_id``: a session of it here with a lower
    ``order`` (see `HubBackend.open_session`) is the older one and closes."""

    client_id: str
    node: str
    order: int


#: What the broker reacts to: the application's hub notifications (one class each, in
#: :mod:`fleetpki.services.notifications`), and other nodes' sessions.
HubEvent = (
    CertificateRevoked
    | DeviceBlocked
    | DeviceKeysReplaced
    | DesiredPatched
    | C2DQueued
    | SessionOpened
)


class HubListener(Protocol):
    """Called by a backend, from any thread, when something changes for live devices."""

    def __call__(self, event: HubEvent) -> None:
        """Take one event; must not block."""


class HubBackend(Protocol):
    """The registry, trust, revocation, telemetry, twin and C2D storage the hub uses.

    Every method is synchronous and may block on the database; the broker calls them
    from worker threads only.
    """

    def authenticate(
        self,
        leaf: x509.Certificate,
        chain: Sequence[x509.Certificate],
        client_id: str,
        now: dt.datetime,
    ) -> AuthenticatedDevice:
        """Decide whether this certificate may connect as ``client_id`` (ref §4.2).

        Raises:
            AuthenticationError: with a code of `fleetpki.hub.policy.Refusal`, the
                one table every backend's refusals come from.
        """
        ...

    def authenticate_token(
        self, token: str, client_id: str, host: str, now: dt.datetime
    ) -> AuthenticatedDevice:
        """Decide whether this SAS token (the CONNECT password) may connect as ``client_id``.

        ``host`` is the CONNECT username's host, already checked to be one of the
        hub's names (ref §1.3, §3.1).

        Raises:
            AuthenticationError: with a code of `fleetpki.hub.policy.Refusal`.
        """
        ...

    def open_session(self, client_id: str) -> int:
        """Tell the other hub nodes that this one now holds ``client_id``'s session.

        Returns the session's order: the announcement's position in the database's
        outbox, which every node compares (the higher is the newer session, whatever
        the clocks say); 0 when no other node runs, which announces nothing.
        """
        ...

    def store_telemetry(self, batch: Sequence[TelemetryRecord]) -> None:
        """Store messages durably in one transaction; return only once committed."""
        ...

    def record_connections(self, changes: Sequence[ConnectionChange]) -> None:
        """Record devices connecting and disconnecting, in order, in one transaction; a
        disconnect only while its connection is the one recorded as connected."""
        ...

    def get_twin(self, device_id: str) -> Twin:
        """The twin's desired and reported properties with their versions."""
        ...

    def patch_reported(self, device_id: str, patch: Mapping[str, Any]) -> int:
        """Merge a reported-properties patch (``None`` deletes); return the new version."""
        ...

    def pending_c2d(self, device_id: str) -> Sequence[C2DMessage]:
        """The device's undelivered cloud-to-device messages, oldest first."""
        ...

    def mark_c2d_delivered(self, device_id: str, message_id: str) -> None:
        """Record that the device acknowledged a cloud-to-device message."""
        ...

    def add_listener(self, listener: HubListener) -> None:
        """Have ``listener`` called for every `HubEvent`."""
        ...

    def remove_listener(self, listener: HubListener) -> None:
        """Stop calling ``listener``."""
        ...
