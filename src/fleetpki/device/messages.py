"""What the hub and a device say to each other above MQTT: C2D messages, methods, twin answers.

These are the values `fleetpki.device.connection.DeviceClient` hands to its handlers and
returns, following Azure IoT Hub's device protocol (``shared/reference/azure-iot-hub-
protocol.md`` §1, cited as "ref §1.x").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetpki.hub.azure.topics import MessageProperties

__all__ = ["CloudMessage", "MethodReply", "MethodRequest", "TwinResponse"]


@dataclass(frozen=True, slots=True)
class CloudMessage:
    """A cloud-to-device message (ref §1.6).

    Attributes:
        body: the payload, as sent.
        properties: system properties (``message_id``, ``correlation_id`` ...) and
            application properties.
    """

    body: bytes
    properties: MessageProperties

    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode()


@dataclass(frozen=True, slots=True)
class MethodRequest:
    """A direct-method call (ref §1.5): its name, request id and JSON payload."""

    name: str
    rid: str
    payload: Any


@dataclass(frozen=True, slots=True)
class MethodReply:
    """A handler's answer to a direct method: an HTTP-like status and a JSON payload."""

    status: int = 200
    payload: Any = None


@dataclass(frozen=True, slots=True)
class TwinResponse:
    """The hub's answer to a twin request (ref §1.5): status, ``$version`` and body."""

    status: int
    version: int | None
    body: bytes
