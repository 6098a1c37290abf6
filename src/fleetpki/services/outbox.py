"""Outbox event types: the names of the durable events other processes and hubs consume."""

from __future__ import annotations

__all__ = [
    "CA_GENERATION_CREATED",
    "CA_GENERATION_RETIRED",
    "CERTIFICATE_RENEWED",
    "CERTIFICATE_REVOKED",
    "DOMAIN_REGISTERED",
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
