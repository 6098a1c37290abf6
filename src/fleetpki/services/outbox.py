"""Outbox event types: the names of the durable events other processes and hubs consume."""

from __future__ import annotations

__all__ = ["CERTIFICATE_REVOKED"]

#: A certificate was revoked: hubs must close its sessions and disable the device.
CERTIFICATE_REVOKED = "certificate.revoked"
