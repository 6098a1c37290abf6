"""What a `ServerConnection` reports: one frozen event per thing the client did (h11 style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleetpki.hub.protocol.packets import ProtocolErrorCode, Publish, QoS, Subscription, Will

if TYPE_CHECKING:
    from fleetpki.hub.protocol.session import OutgoingMessage

__all__ = [
    "ConnectRequested",
    "Disconnected",
    "Event",
    "PingReceived",
    "ProtocolViolation",
    "PubAckReceived",
    "Published",
    "Subscribed",
    "TimedOut",
    "Unsubscribed",
]


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """A valid CONNECT arrived; answer with `ServerConnection.accept` or `refuse`."""

    client_id: str
    username: str | None
    password: bytes | None
    clean_session: bool
    keepalive: int
    will: Will | None


@dataclass(frozen=True, slots=True)
class Published:
    """The client published a message. For QoS 1, acknowledge with `puback(packet_id)`.

    The decoded packet is kept whole (building a second object per message would cost as
    much as decoding it); its fields are readable directly on the event.
    """

    packet: Publish

    @property
    def topic(self) -> str:
        """The topic name."""
        return self.packet.topic

    @property
    def payload(self) -> bytes:
        """The application message."""
        return self.packet.payload

    @property
    def qos(self) -> QoS:
        """0 or 1; QoS 2 is refused as a violation, as Azure IoT Hub does."""
        return self.packet.qos

    @property
    def packet_id(self) -> int | None:
        """The id to acknowledge, for QoS 1."""
        return self.packet.packet_id

    @property
    def retain(self) -> bool:
        """The RETAIN flag (Azure turns it into the ``mqtt-retain`` property)."""
        return self.packet.retain

    @property
    def dup(self) -> bool:
        """Whether the client says this may be a re-delivery."""
        return self.packet.dup


@dataclass(frozen=True, slots=True)
class PubAckReceived:
    """The client acknowledged a QoS 1 message we sent; it has left the in-flight table."""

    message: OutgoingMessage


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The client asked for subscriptions; answer with `suback(packet_id, ...)`."""

    packet_id: int
    subscriptions: tuple[Subscription, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """The client asked to drop subscriptions; answer with `unsuback(packet_id)`."""

    packet_id: int
    topic_filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PingReceived:
    """A PINGREQ arrived; answer with `pingresp()` (§3.12.4)."""


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The client sent DISCONNECT; close the transport. Its Will is discarded (§3.14.4)."""


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The client broke the protocol; write ``reply`` (often empty) and close the transport.

    Attributes:
        code: a `ProtocolErrorCode` value, such as ``mqtt.malformed``.
        reason: a sentence naming the rule, safe to log.
        reply: bytes to send before closing: a CONNACK refusal for a few CONNECT errors.
        will: the Will to publish (§3.1.2.5), when the connection had been accepted.
    """

    code: ProtocolErrorCode
    reason: str
    reply: bytes = b""
    will: Will | None = None


@dataclass(frozen=True, slots=True)
class TimedOut:
    """No CONNECT in time, or no packet within 1.5 x keepalive (§3.1.2.10); close.

    Attributes:
        code: ``mqtt.connect_timeout`` or ``mqtt.keepalive_timeout``.
        will: the Will to publish (§3.1.2.5), when the connection had been accepted.
    """

    code: ProtocolErrorCode
    will: Will | None = None


Event = (
    ConnectRequested
    | Published
    | PubAckReceived
    | Subscribed
    | Unsubscribed
    | PingReceived
    | Disconnected
    | ProtocolViolation
    | TimedOut
)
