"""MQTT 3.1.1 control packets as immutable values, their codes and the protocol's error."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from fleetpki.errors import ValidationError

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "MAX_REMAINING_LENGTH",
    "ConnAck",
    "Connect",
    "ConnectReturnCode",
    "Disconnect",
    "Packet",
    "PacketType",
    "PingReq",
    "PingResp",
    "ProtocolError",
    "ProtocolErrorCode",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "QoS",
    "SubAck",
    "SubAckReturnCode",
    "Subscribe",
    "Subscription",
    "UnsubAck",
    "Unsubscribe",
    "Will",
]

#: The largest Remaining Length four varint bytes can carry (MQTT 3.1.1 §2.2.3).
MAX_REMAINING_LENGTH = 268_435_455

#: Azure caps a message at 262144 bytes (the SDK refuses larger ones before sending); the
#: extra 8 KiB leaves room for the fixed header, the topic with its property bag and the id.
DEFAULT_MAX_PACKET_SIZE = 262_144 + 8_192


class ProtocolErrorCode(StrEnum):
    """The stable codes a `ProtocolError` (or a session's violation event) carries."""

    MALFORMED = "mqtt.malformed"
    PACKET_TOO_LARGE = "mqtt.packet_too_large"
    UNSUPPORTED_PROTOCOL_LEVEL = "mqtt.unsupported_protocol_level"
    INVALID_TOPIC = "mqtt.invalid_topic"
    UNEXPECTED_PACKET = "mqtt.unexpected_packet"
    QOS_NOT_SUPPORTED = "mqtt.qos_not_supported"
    IDENTIFIER_REJECTED = "mqtt.identifier_rejected"
    CONNECT_TIMEOUT = "mqtt.connect_timeout"
    KEEPALIVE_TIMEOUT = "mqtt.keepalive_timeout"


class ProtocolError(ValidationError):
    """The bytes (or a packet to encode) break MQTT 3.1.1; the connection must be closed.

    Args:
        reason: a short sentence naming the rule broken, safe to log and show.
        code: one of `ProtocolErrorCode`; ``mqtt.malformed`` unless a more specific one fits.
    """

    code: ProtocolErrorCode

    def __init__(self, reason: str, code: ProtocolErrorCode = ProtocolErrorCode.MALFORMED) -> None:
        super().__init__(code, reason)
        self.reason = reason


class PacketType(IntEnum):
    """Control packet types, the high nibble of the first byte (MQTT 3.1.1 §2.2.1)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class QoS(IntEnum):
    """Quality of service levels (MQTT 3.1.1 §4.3); the value 3 does not exist."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2


class ConnectReturnCode(IntEnum):
    """CONNACK return codes (MQTT 3.1.1 §3.2.2.3)."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


class SubAckReturnCode(IntEnum):
    """SUBACK return codes: the granted QoS or failure (MQTT 3.1.1 §3.9.3)."""

    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    FAILURE = 0x80


@dataclass(frozen=True, slots=True)
class Will:
    """The Will message a client leaves in its CONNECT (MQTT 3.1.1 §3.1.2.5)."""

    topic: str
    message: bytes
    qos: QoS = QoS.AT_MOST_ONCE
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT (§3.1). Protocol name and level are always "MQTT" and 4 on the wire."""

    client_id: str
    clean_session: bool = True
    keepalive: int = 60
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None


@dataclass(frozen=True, slots=True)
class ConnAck:
    """CONNACK (§3.2)."""

    session_present: bool
    return_code: ConnectReturnCode


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH (§3.3). ``packet_id`` is set exactly when ``qos`` is above 0 (§2.3.1)."""

    topic: str
    payload: bytes
    qos: QoS = QoS.AT_MOST_ONCE
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None


@dataclass(frozen=True, slots=True)
class PubAck:
    """PUBACK (§3.4): the answer to a QoS 1 PUBLISH."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class PubRec:
    """PUBREC (§3.5): first answer to a QoS 2 PUBLISH."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class PubRel:
    """PUBREL (§3.6): the answer to PUBREC."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class PubComp:
    """PUBCOMP (§3.7): the answer to PUBREL."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscription:
    """One topic filter and its requested QoS inside a SUBSCRIBE (§3.8.3)."""

    topic_filter: str
    qos: QoS


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE (§3.8): at least one subscription."""

    packet_id: int
    subscriptions: tuple[Subscription, ...]


@dataclass(frozen=True, slots=True)
class SubAck:
    """SUBACK (§3.9): one return code per subscription, in order."""

    packet_id: int
    return_codes: tuple[SubAckReturnCode, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE (§3.10): at least one topic filter."""

    packet_id: int
    topic_filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnsubAck:
    """UNSUBACK (§3.11)."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class PingReq:
    """PINGREQ (§3.12)."""


@dataclass(frozen=True, slots=True)
class PingResp:
    """PINGRESP (§3.13)."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT (§3.14): the client's clean goodbye."""


Packet = (
    Connect
    | ConnAck
    | Publish
    | PubAck
    | PubRec
    | PubRel
    | PubComp
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
)
