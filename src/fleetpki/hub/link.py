"""One client connection as the broker and its parts see it (the listener implements it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fleetpki.hub.azure.dps import DpsUsername
from fleetpki.hub.azure.topics import ClientIdentity
from fleetpki.hub.backend import AuthenticatedDevice
from fleetpki.hub.protocol import ServerConnection
from fleetpki.services.provisioning_requests import DeviceCredentials

__all__ = ["Link", "ProvisioningClient"]


@dataclass(frozen=True, slots=True)
class ProvisioningClient:
    """A connection accepted as a provisioning (DPS) client: its username and certificates."""

    username: DpsUsername
    credentials: DeviceCredentials


class Link(Protocol):
    """One client connection: its MQTT state, who it is, and how to write to it or close it."""

    mqtt: ServerConnection
    device: AuthenticatedDevice | None
    identity: ClientIdentity | None
    #: Set when the connection is a provisioning (DPS) client rather than a hub device.
    provisioning: ProvisioningClient | None
    unacked: int

    def write(self, data: bytes) -> None:
        """Send bytes to the client (nothing happens once closed)."""

    def close(self, reason: str) -> None:
        """Close the connection now; ``reason`` is a code for the log."""

    def peer_certificates(self) -> tuple[bytes | None, list[bytes]]:
        """The client's TLS leaf and the other certificates it sent, as DER.

        Called once, for the connection's CONNECT: the listener may free the chain
        after it (`fleetpki.hub.tls.release_handshake_memory`).
        """

    def process(self) -> None:
        """Handle input held back while the CONNECT was being authenticated."""

    def pause_reading(self) -> None:
        """Stop reading from the client (back-pressure)."""

    def resume_reading(self) -> None:
        """Read from the client again."""
