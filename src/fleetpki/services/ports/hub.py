"""The repositories the hub's control-plane services declare: devices, CAs, messages, policies.

Implemented on SQL by :mod:`fleetpki.store.repositories.hub_devices` and its siblings,
and reached through the unit of work (``tx.hub_devices``, ``tx.hub_cas``, ...). The
entities are the records of :mod:`fleetpki.store.hub_models`; services change their
attributes and the unit of work writes them at commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from fleetpki.store.hub_models import (
    HubC2DMessage,
    HubCA,
    HubDevice,
    HubLink,
    HubLinkPin,
    HubMessage,
    HubSasPolicy,
)
from fleetpki.store.models import CARecord

__all__ = [
    "NO_PROPERTIES",
    "HubAuditTrail",
    "HubC2DRepository",
    "HubCARepository",
    "HubDeviceRepository",
    "HubLinkPinRepository",
    "HubLinkRepository",
    "HubSasPolicyRepository",
    "HubTelemetryRepository",
    "TelemetryInput",
]


#: The empty property map a `TelemetryInput` has by default (shared, read-only).
NO_PROPERTIES: Mapping[str, Any] = MappingProxyType({})


class TelemetryInput(NamedTuple):
    """One device-to-cloud message to store (ref §1.5, §1.6).

    The hub makes one per telemetry PUBLISH and it travels unchanged to the repository's
    insert, so it is a named tuple: immutable, and cheap to build.

    Attributes:
        device_id / module_id: who sent it.
        enqueued_at: when the hub received it (aware, UTC).
        body: the payload, as sent.
        system_properties: decoded ``$.`` properties by their Azure names
            (``message-id``, ``correlation-id``, ``content-type`` ...).
        properties: application properties, decoded exactly (a key without ``=``
            has the value ``None``).
    """

    device_id: str
    enqueued_at: dt.datetime
    body: bytes
    system_properties: Mapping[str, str] = NO_PROPERTIES
    properties: Mapping[str, str | None] = NO_PROPERTIES
    module_id: str | None = None


class HubDeviceRepository(Protocol):
    """Device identities and their twins (one row per device, ref §3.2, §3.3)."""

    def get(self, device_id: str, *, for_update: bool = False) -> HubDevice | None:
        """The device ``device_id``, or ``None``.

        ``for_update`` locks the row for this unit of work, for a read-modify-write
        (a twin merge, a counter) that another process may make at the same time.
        """
        ...

    def auth_facts(self, device_id: str) -> tuple[str, str, str, str | None, str | None] | None:
        """What a certificate connect needs of the device, columns only (no twin):
        ``(device_id, status, auth_type, primary_thumbprint, secondary_thumbprint)``."""
        ...

    def list(self, *, limit: int | None = None, offset: int = 0) -> Sequence[HubDevice]:
        """Devices by id, at most ``limit``, skipping the first ``offset``."""
        ...

    def add(self, device: HubDevice) -> None:
        """Register a new device (written at once, so a duplicate id fails here)."""
        ...

    def delete(self, device: HubDevice) -> None:
        """Remove a device."""
        ...

    def count_by_status(self) -> Mapping[str, int]:
        """How many devices have each status (``enabled``, ``disabled``)."""
        ...

    def record_connection(
        self,
        device_id: str,
        *,
        connected: bool,
        at: dt.datetime,
        node: str | None = None,
        session: str | None = None,
        order: int = 0,
    ) -> dt.datetime | None:
        """Set the device's connection state, its time and ``lastActivityTime``.

        A connect records ``node``, ``session`` (the connection's id) and ``order`` (the
        session's order among the hub nodes, 0 when not announced) as the connection
        that holds the device; it does not apply while the device is recorded as
        connected in a session of a higher order (both above 0). A disconnect that names
        a ``session`` applies only while that node and session are recorded as
        connected; one that names none always applies.

        The time is ``at``, or one microsecond after the device's previous change when
        ``at`` is not later (a clock that stepped back). Returns the time set, ``None``
        when there is no such device or the change does not apply (nothing is written).
        One UPDATE in the usual case (no ORM load).
        """
        ...

    def count_connected(self) -> int:
        """Devices whose recorded connection state is ``Connected``."""
        ...


class HubCARepository(Protocol):
    """CA certificates uploaded to the hub (ref §4.1)."""

    def get_by_name(self, name: str) -> HubCA | None:
        """The hub CA called ``name``, or ``None``."""
        ...

    def find_by_sha1(self, sha1_hex: str) -> HubCA | None:
        """The hub CA whose certificate has this SHA-1 thumbprint (upper hex), or ``None``."""
        ...

    def list(self) -> Sequence[HubCA]:
        """Every hub CA, by name."""
        ...

    def add(self, ca: HubCA) -> None:
        """Store a new hub CA (written at once, so a duplicate name fails here)."""
        ...

    def delete(self, ca: HubCA) -> None:
        """Remove a hub CA."""
        ...

    def stamp(self) -> Hashable:
        """A value that changes whenever any hub CA is added, removed, re-coded or verified."""
        ...

    def local_ca(self, ca_id: str) -> CARecord | None:
        """The fleetpki CA ``ca_id`` that ``trust_local_ca`` uploads, or ``None``."""
        ...


class HubTelemetryRepository(Protocol):
    """Stored device-to-cloud messages (ref §1.5)."""

    def add_batch(self, batch: Sequence[TelemetryInput]) -> None:
        """Insert ``batch`` in one statement."""
        ...

    def list(
        self, *, device_id: str | None, after_id: int | None, limit: int
    ) -> Sequence[HubMessage]:
        """Messages in arrival order after ``after_id`` (one device or all), at most ``limit``."""
        ...

    def latest_id(self, device_id: str | None) -> int:
        """The newest message id (of one device, or of all), 0 when there is none."""
        ...

    def recent(self, device_id: str, limit: int) -> Sequence[HubMessage]:
        """The device's newest ``limit`` messages, newest first."""
        ...

    def last_id_at(self, at: dt.datetime) -> int:
        """The newest message id enqueued at or before ``at``, 0 when there is none."""
        ...

    def first(self) -> HubMessage | None:
        """The oldest stored message, or ``None``."""
        ...


class HubC2DRepository(Protocol):
    """The cloud-to-device queue (ref §1.5)."""

    def add(self, message: HubC2DMessage) -> None:
        """Queue a message."""
        ...

    def pending(self, device_id: str) -> Sequence[HubC2DMessage]:
        """The device's undelivered messages, oldest first."""
        ...

    def find_pending(self, device_id: str, message_id: str) -> HubC2DMessage | None:
        """The device's undelivered message ``message_id``, or ``None``."""
        ...

    def delete_for_device(self, device_id: str) -> None:
        """Drop every message of ``device_id`` (the device is being deleted)."""
        ...

    def feedback_due(self, limit: int) -> Sequence[HubC2DMessage]:
        """Messages whose outcome is owed to the feedback receiver, oldest first."""
        ...

    def by_ids(self, ids: Sequence[int]) -> Sequence[HubC2DMessage]:
        """The messages of these row ids (those that still exist)."""
        ...


class HubLinkPinRepository(Protocol):
    """Devices that hub links pinned to a thumbprint (see :class:`HubLinkPin`)."""

    def get(self, link_name: str, device_id: str) -> HubLinkPin | None:
        """The link's pin of the device, if any."""
        ...

    def add(self, pin: HubLinkPin) -> None:
        """Record a new pin."""
        ...

    def delete(self, pin: HubLinkPin) -> None:
        """Forget a pin (the device is back on CA authentication)."""
        ...

    def due(self, link_name: str, now: dt.datetime) -> Sequence[HubLinkPin]:
        """The link's pins whose revoked certificate has expired by ``now``."""
        ...

    def for_link(self, link_name: str) -> Sequence[HubLinkPin]:
        """Every pin of the link, by device id."""
        ...


class HubSasPolicyRepository(Protocol):
    """Shared-access policies of the service API (ref §3.1)."""

    def names(self) -> frozenset[str]:
        """The names of the stored policies."""
        ...

    def get(self, name: str) -> HubSasPolicy | None:
        """The policy ``name``, or ``None``."""
        ...

    def add(self, policy: HubSasPolicy) -> None:
        """Store a new policy."""
        ...


class HubAuditTrail(Protocol):
    """Audit entries written by hub use cases, in the change's unit of work.

    Transitional: the CA side's audit repository takes this over when it lands.
    """

    def record(
        self,
        *,
        actor_id: str,
        source: str,
        action: str,
        object_type: str,
        object_id: str,
        at: dt.datetime,
        details: Mapping[str, Any],
    ) -> None:
        """Add one audit entry (never secrets in ``details``)."""
        ...


class HubLinkRepository(Protocol):
    """Hub links: the hubs this CA drives, with the CAs each trusts (``link.cas``)."""

    def get(self, name: str) -> HubLink | None:
        """The link ``name``, or ``None``."""
        ...

    def list(self) -> Sequence[HubLink]:
        """Every link, by name."""
        ...

    def add(self, link: HubLink) -> None:
        """Store a new link (written at once, so a duplicate name fails here)."""
        ...

    def delete(self, link: HubLink) -> None:
        """Remove a link and its CA records."""
        ...
