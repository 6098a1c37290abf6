"""Outbox event types: the names of the durable events other processes and hubs consume."""

from __future__ import annotations

__all__ = [
    "CA_GENERATION_CREATED",
    "CA_GENERATION_RETIRED",
    "CERTIFICATE_RENEWED",
    "CERTIFICATE_REVOKED",
    "DOMAIN_REGISTERED",
    "HUB_C2D_QUEUED",
    "HUB_DESIRED_PATCHED",
    "HUB_DEVICE_BLOCKED",
    "HUB_DEVICE_KEYS_REPLACED",
    "HUB_METHOD_CALLED",
    "HUB_SESSION_OPENED",
]

#: A certificate was revoked: hubs must close its sessions and disable the device.
CERTIFICATE_REVOKED = "certificate.revoked"
#: A device renewed its certificate: a link that pinned the device to its old
#: thumbprint re-pins it to the new one.
CERTIFICATE_RENEWED = "certificate.renewed"
#: A domain (a device id) was registered: links that register devices create it.
DOMAIN_REGISTERED = "domain.registered"
#: A CA was renewed: every link that trusts it uploads and verifies the new generation,
#: which becomes active once all of them hold it (hubs first).
CA_GENERATION_CREATED = "ca.generation_created"
#: A CA generation has nothing outstanding: every link removes it from its hub.
CA_GENERATION_RETIRED = "ca.generation_retired"

# -- what every hub node acts on for its live sessions (fleetpki.services.hub_notices) --
#: A device was disabled or deleted: the node holding its session closes it.
HUB_DEVICE_BLOCKED = "hub.device_blocked"
#: A sas device's keys were replaced: the node holding a session its old key signed
#: closes it.
HUB_DEVICE_KEYS_REPLACED = "hub.device_keys_replaced"
#: Desired twin properties changed: the node holding the session sends the patch.
HUB_DESIRED_PATCHED = "hub.desired_patched"
#: A cloud-to-device message was queued: the node holding the session delivers it.
HUB_C2D_QUEUED = "hub.c2d_queued"
#: A direct method was called where the device's session is not: the node holding it
#: answers (fleetpki.services.hub_method_relay).
HUB_METHOD_CALLED = "hub.method_called"
#: A hub node accepted a device that another node may still hold: the older session
#: closes (one connection per client id across nodes, as within one).
HUB_SESSION_OPENED = "hub.session_opened"
