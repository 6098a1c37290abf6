"""What hub nodes act on for their live sessions: told here at once, and to every node.

A change that concerns a live device session (a disabled or deleted device, replaced
symmetric keys, a desired twin patch, a queued cloud-to-device message) is made by
whichever process served the call: an API worker, the CLI, another node. The session may
be held by any hub node on the database. So :func:`tell_hub_nodes` does two things in
the change's own unit of work: it queues the notification for this process's bus (the
hub in this process acts within the commit's thread), and it appends an outbox event
that every hub node's consumer (``hub:<node>``) gets its own delivery of.
:func:`hub_event_of` turns such a delivery back into the notification, for the node's
broker.

Revocations follow the same path from their own writer
(:func:`fleetpki.services.certificates.revoke_in`: ``certificate.revoked``). What closes
sessions (:data:`HUB_CLOSE_TYPES`) is also broadcast whole to listening processes
(PostgreSQL), so that each node closes at once (:func:`closing_event_of`), without
waiting for its delivery, which follows and changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from fleetpki.services.notifications import (
    C2DQueued,
    CertificateRevoked,
    DesiredPatched,
    DeviceBlocked,
    DeviceKeysReplaced,
    EventBroadcast,
)
from fleetpki.services.outbox import (
    CERTIFICATE_REVOKED,
    HUB_C2D_QUEUED,
    HUB_DESIRED_PATCHED,
    HUB_DEVICE_BLOCKED,
    HUB_DEVICE_KEYS_REPLACED,
)
from fleetpki.services.ports import UnitOfWork
from fleetpki.services.ports.events import Delivery

__all__ = [
    "HUB_CLOSE_TYPES",
    "HUB_NOTICE_TYPES",
    "HubClose",
    "HubNotice",
    "closing_event_of",
    "hub_event_from",
    "hub_event_of",
    "tell_hub_nodes",
]

HubNotice = DeviceBlocked | DeviceKeysReplaced | DesiredPatched | C2DQueued

HubClose = CertificateRevoked | DeviceBlocked | DeviceKeysReplaced

#: What closes sessions: also broadcast whole, so that every node acts at once.
HUB_CLOSE_TYPES = frozenset({CERTIFICATE_REVOKED, HUB_DEVICE_BLOCKED, HUB_DEVICE_KEYS_REPLACED})

#: The outbox event types a hub node's consumer takes for its sessions.
HUB_NOTICE_TYPES = (
    CERTIFICATE_REVOKED,
    HUB_DEVICE_BLOCKED,
    HUB_DEVICE_KEYS_REPLACED,
    HUB_DESIRED_PATCHED,
    HUB_C2D_QUEUED,
)


def tell_hub_nodes(tx: UnitOfWork, notice: HubNotice, *, at: dt.datetime) -> None:
    """Tell this process (after commit) and every hub node (through the outbox) of ``notice``."""
    tx.publish(notice)
    match notice:
        case DeviceBlocked(device_id, reason):
            tx.events.append(
                HUB_DEVICE_BLOCKED, device_id, {"reason": reason}, at=at, broadcast=True
            )
        case DeviceKeysReplaced(device_id, key_ids):
            tx.events.append(
                HUB_DEVICE_KEYS_REPLACED,
                device_id,
                {"key_ids": sorted(key_ids)},
                at=at,
                broadcast=True,
            )
        case DesiredPatched(device_id, patch, version):
            tx.events.append(
                HUB_DESIRED_PATCHED, device_id, {"patch": dict(patch), "version": version}, at=at
            )
        case C2DQueued(device_id):
            tx.events.append(HUB_C2D_QUEUED, device_id, {}, at=at)


def hub_event_of(delivery: Delivery) -> HubNotice | CertificateRevoked | None:
    """The notification a hub node's delivery stands for, or ``None`` for another type."""
    return hub_event_from(delivery.event_type, delivery.subject_id, delivery.payload)


def closing_event_of(broadcast: EventBroadcast) -> HubClose | None:
    """What a broadcast from another process closes at once, or ``None``: revocations,
    blocked devices and replaced keys (idempotent), never a patch or C2D, which their
    delivery brings exactly once."""
    if broadcast.event_type not in HUB_CLOSE_TYPES:
        return None
    event = hub_event_from(broadcast.event_type, broadcast.subject_id, broadcast.payload)
    assert isinstance(event, CertificateRevoked | DeviceBlocked | DeviceKeysReplaced)
    return event


def hub_event_from(
    event_type: str, subject: str, payload: Mapping[str, Any]
) -> HubNotice | CertificateRevoked | None:
    """The notification an outbox event of ``event_type`` stands for (``None``: another)."""
    if event_type == CERTIFICATE_REVOKED:
        sha1 = payload.get("sha1")
        return CertificateRevoked(
            serial=str(payload.get("serial", subject)), sha1=str(sha1) if sha1 else None
        )
    if event_type == HUB_DEVICE_BLOCKED:
        return DeviceBlocked(subject, str(payload.get("reason", "hub.device_disabled")))
    if event_type == HUB_DEVICE_KEYS_REPLACED:
        key_ids = payload.get("key_ids")
        names = frozenset(str(k) for k in key_ids) if isinstance(key_ids, list) else frozenset()
        return DeviceKeysReplaced(subject, names)
    if event_type == HUB_DESIRED_PATCHED:
        patch = payload.get("patch")
        return DesiredPatched(
            subject, dict(patch) if isinstance(patch, dict) else {}, int(payload.get("version", 1))
        )
    if event_type == HUB_C2D_QUEUED:
        return C2DQueued(subject)
    return None
