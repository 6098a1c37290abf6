"""The MQTT 3.1.1 wire format: packets as immutable values, an encoder and an incremental reader."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from fleetpki.errors import ValidationError

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "MAX_REMAINING_LENGTH",
    "ConnAck",
    "Connect",
    "ConnectReturnCode",
    "Disconnect",
    "Packet",
    "PacketReader",
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
    "encode",
    "encode_puback",
    "encode_publish",
    "validate_topic_filter",
    "validate_topic_name",
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


# --- topics (§4.7) ---------------------------------------------------------------------------


def validate_topic_name(topic: str) -> None:
    """Check a topic name for PUBLISH: non-empty, no wildcards (§4.7.3, §3.3.2.1).

    Raises:
        ProtocolError: with code ``mqtt.invalid_topic``.
    """
    if not topic:
        raise ProtocolError("a topic name must not be empty", ProtocolErrorCode.INVALID_TOPIC)
    if "+" in topic or "#" in topic:
        raise ProtocolError(
            "a topic name in PUBLISH must not contain wildcards", ProtocolErrorCode.INVALID_TOPIC
        )


def validate_topic_filter(topic_filter: str) -> None:
    """Check a topic filter: non-empty, wildcards only as whole levels, ``#`` last (§4.7.1).

    Raises:
        ProtocolError: with code ``mqtt.invalid_topic``.
    """
    if not topic_filter:
        raise ProtocolError("a topic filter must not be empty", ProtocolErrorCode.INVALID_TOPIC)
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if ("#" in level and (level != "#" or index != last)) or ("+" in level and level != "+"):
            # §4.7.1.2, §4.7.1.3: '#' is a whole last level, '+' a whole level.
            raise ProtocolError("misplaced wildcard", ProtocolErrorCode.INVALID_TOPIC)


# --- encoding --------------------------------------------------------------------------------

_PACK_ID = struct.Struct(">H").pack


def _encode_length(length: int) -> bytes:
    """Encode a Remaining Length as the §2.2.3 varint (1 to 4 bytes)."""
    if length < 0x80:
        return bytes((length,))
    if length > MAX_REMAINING_LENGTH:
        raise ProtocolError("packet too large for MQTT", ProtocolErrorCode.PACKET_TOO_LARGE)
    out = bytearray()
    while length > 0x7F:
        out.append(length & 0x7F | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out)


def _encode_string(value: str) -> bytes:
    """Encode a UTF-8 string with its two-byte length prefix (§1.5.3)."""
    if "\x00" in value:
        raise ProtocolError("strings must not contain U+0000 (§1.5.3)")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProtocolError("strings must be well-formed UTF-8 (§1.5.3)") from exc
    return _encode_binary(raw)


def _encode_binary(value: bytes) -> bytes:
    """Encode binary data with its two-byte length prefix (§1.5.3 layout, §3.1.3.4)."""
    if len(value) > 0xFFFF:
        raise ProtocolError("a string or binary field is longer than 65535 bytes")
    return _PACK_ID(len(value)) + value


def _encode_packet_id(packet_id: int | None) -> bytes:
    if packet_id is None or not 0 < packet_id <= 0xFFFF:
        raise ProtocolError("a packet identifier must be in 1..65535 (§2.3.1)")
    return _PACK_ID(packet_id)


def _frame(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + _encode_length(len(body)) + body


def encode_publish(
    topic: str, payload: bytes, qos: int, retain: bool, dup: bool, packet_id: int | None
) -> bytes:
    """Encode a PUBLISH from its fields without building a `Publish` first (the hot path)."""
    validate_topic_name(topic)
    header = 0x30 | (qos << 1) | retain | (dup << 3)
    if qos == 0:
        if dup:
            raise ProtocolError("DUP must be 0 for QoS 0 (§3.3.1.1)")
        if packet_id is not None:
            raise ProtocolError("a QoS 0 PUBLISH has no packet identifier (§2.3.1)")
        variable = _encode_string(topic)
    elif qos in (1, 2):
        variable = _encode_string(topic) + _encode_packet_id(packet_id)
    else:
        raise ProtocolError("QoS 3 does not exist (§3.3.1.2)")
    length = len(variable) + len(payload)
    return b"".join((bytes((header,)), _encode_length(length), variable, payload))


def _encode_connect(packet: Connect) -> bytes:
    if not 0 <= packet.keepalive <= 0xFFFF:
        raise ProtocolError("keepalive must fit in two bytes (§3.1.2.10)")
    flags = 0x02 if packet.clean_session else 0
    payload = [_encode_string(packet.client_id)]
    if packet.will is not None:
        validate_topic_name(packet.will.topic)
        flags |= 0x04 | (packet.will.qos << 3) | (packet.will.retain << 5)
        payload += [_encode_string(packet.will.topic), _encode_binary(packet.will.message)]
    if packet.username is not None:
        flags |= 0x80
        payload.append(_encode_string(packet.username))
    if packet.password is not None:
        if packet.username is None:
            raise ProtocolError("a password needs a username (§3.1.2.9)")
        flags |= 0x40
        payload.append(_encode_binary(packet.password))
    header = b"\x00\x04MQTT\x04" + bytes((flags,)) + _PACK_ID(packet.keepalive)
    return _frame(0x10, header + b"".join(payload))


def _encode_connack(packet: ConnAck) -> bytes:
    if packet.session_present and packet.return_code != ConnectReturnCode.ACCEPTED:
        raise ProtocolError("a refusal must not claim a present session (§3.2.2.2)")
    return bytes((0x20, 0x02, int(packet.session_present), packet.return_code))


def _encode_subscribe(packet: Subscribe) -> bytes:
    if not packet.subscriptions:
        raise ProtocolError("SUBSCRIBE needs at least one filter (§3.8.3)")
    parts = [_encode_packet_id(packet.packet_id)]
    for subscription in packet.subscriptions:
        validate_topic_filter(subscription.topic_filter)
        parts += [_encode_string(subscription.topic_filter), bytes((subscription.qos,))]
    return _frame(0x82, b"".join(parts))


def _encode_suback(packet: SubAck) -> bytes:
    if not packet.return_codes:
        raise ProtocolError("SUBACK needs at least one return code (§3.9.3)")
    return _frame(0x90, _encode_packet_id(packet.packet_id) + bytes(packet.return_codes))


def _encode_unsubscribe(packet: Unsubscribe) -> bytes:
    if not packet.topic_filters:
        raise ProtocolError("UNSUBSCRIBE needs at least one filter (§3.10.3)")
    parts = [_encode_packet_id(packet.packet_id)]
    for topic_filter in packet.topic_filters:
        validate_topic_filter(topic_filter)
        parts.append(_encode_string(topic_filter))
    return _frame(0xA2, b"".join(parts))


def _encode_with_id(
    header: int,
) -> Callable[[PubAck | PubRec | PubRel | PubComp | UnsubAck], bytes]:
    prefix = bytes((header, 0x02))
    return lambda packet: prefix + _encode_packet_id(packet.packet_id)


def encode_puback(packet_id: int) -> bytes:
    """Encode a PUBACK without building a `PubAck` first (the hot path).

    Raises:
        ProtocolError: ``packet_id`` is not in 1..65535 (§2.3.1).
    """
    if not 0 < packet_id <= 0xFFFF:
        raise ProtocolError("a packet identifier must be in 1..65535 (§2.3.1)")
    return b"\x40\x02" + _PACK_ID(packet_id)


_ENCODERS: dict[type[Packet], Callable[[Any], bytes]] = {
    Publish: lambda p: encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id),
    PubAck: _encode_with_id(0x40),
    PubRec: _encode_with_id(0x50),
    PubRel: _encode_with_id(0x62),  # PUBREL carries flags 0010 (§3.6.1)
    PubComp: _encode_with_id(0x70),
    UnsubAck: _encode_with_id(0xB0),
    Connect: _encode_connect,
    ConnAck: _encode_connack,
    Subscribe: _encode_subscribe,
    SubAck: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    PingReq: lambda _: b"\xc0\x00",
    PingResp: lambda _: b"\xd0\x00",
    Disconnect: lambda _: b"\xe0\x00",
}


def encode(packet: Packet) -> bytes:
    """Return the wire bytes of ``packet``.

    Raises:
        ProtocolError: the packet cannot be sent legally (a wildcard in a PUBLISH topic, a
            missing or zero packet id, a string with U+0000, a field over 65535 bytes ...).
    """
    return _ENCODERS[type(packet)](packet)


# --- decoding --------------------------------------------------------------------------------

_UNPACK_ID = struct.Struct(">H").unpack_from

_QOS = (QoS.AT_MOST_ONCE, QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE)
_SUBACK_CODES = {int(code): code for code in SubAckReturnCode}


def _read_id(data: bytearray, pos: int, end: int) -> int:
    if pos + 2 > end:
        raise ProtocolError("the packet ends inside its packet identifier")
    (packet_id,) = _UNPACK_ID(data, pos)
    if packet_id == 0:
        raise ProtocolError("packet identifiers must be non-zero (§2.3.1)")
    return int(packet_id)


def _field_bounds(data: bytearray, pos: int, end: int) -> tuple[int, int]:
    """Where the field with a two-byte length prefix at ``pos`` starts and stops (§1.5.3)."""
    if pos + 2 > end:
        raise ProtocolError("the packet ends inside a length prefix")
    (length,) = _UNPACK_ID(data, pos)
    if pos + 2 + length > end:
        raise ProtocolError("a string or binary field runs past the end of the packet")
    return pos + 2, pos + 2 + length


def _read_binary(data: bytearray, pos: int, end: int) -> tuple[bytes, int]:
    start, stop = _field_bounds(data, pos, end)
    return bytes(memoryview(data)[start:stop]), stop


def _read_string(data: bytearray, pos: int, end: int) -> tuple[str, int]:
    start, stop = _field_bounds(data, pos, end)
    try:
        # Python's strict decoder also rejects encoded surrogates U+D800..U+DFFF (§1.5.3-1).
        value = data[start:stop].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("a string is not well-formed UTF-8 (§1.5.3)") from exc
    if "\x00" in value:
        raise ProtocolError("a string contains U+0000 (§1.5.3-2)")
    return value, stop


def _decode_connect(data: bytearray, pos: int, end: int) -> Connect:
    name, pos = _read_string(data, pos, end)
    if pos + 4 > end:
        raise ProtocolError("CONNECT ends inside its variable header")
    level = data[pos]
    if name not in ("MQTT", "MQIsdp"):
        raise ProtocolError("the protocol name must be 'MQTT' (§3.1.2.1)")
    if name != "MQTT" or level != 4:
        # §3.1.2.2: the server answers CONNACK 1 and closes; the session does that.
        raise ProtocolError(
            f"protocol level {level} is not MQTT 3.1.1 (§3.1.2.2)",
            ProtocolErrorCode.UNSUPPORTED_PROTOCOL_LEVEL,
        )
    flags = data[pos + 1]
    (keepalive,) = _UNPACK_ID(data, pos + 2)
    pos += 4
    if flags & 0x01:
        raise ProtocolError("the reserved CONNECT flag must be 0 (§3.1.2.3)")
    will_flag = flags & 0x04
    will_qos = (flags >> 3) & 0x03
    will_retain = flags & 0x20
    if will_qos == 3:
        raise ProtocolError("Will QoS 3 does not exist (§3.1.2.6)")
    if not will_flag and (will_qos or will_retain):
        raise ProtocolError("Will QoS and Retain need the Will flag (§3.1.2.6, §3.1.2.7)")
    if flags & 0x40 and not flags & 0x80:
        raise ProtocolError("the password flag needs the user name flag (§3.1.2.9)")
    client_id, pos = _read_string(data, pos, end)
    will = None
    if will_flag:
        will_topic, pos = _read_string(data, pos, end)
        validate_topic_name(will_topic)
        will_message, pos = _read_binary(data, pos, end)
        will = Will(will_topic, will_message, _QOS[will_qos], bool(will_retain))
    username = password = None
    if flags & 0x80:
        username, pos = _read_string(data, pos, end)
    if flags & 0x40:
        password, pos = _read_binary(data, pos, end)
    if pos != end:
        raise ProtocolError("CONNECT has bytes after its last field")
    return Connect(client_id, bool(flags & 0x02), int(keepalive), username, password, will)


def _decode_connack(data: bytearray, pos: int, end: int) -> ConnAck:
    if end - pos != 2:
        raise ProtocolError("CONNACK has a remaining length of 2 (§3.2.1)")
    flags, code = data[pos], data[pos + 1]
    if flags & 0xFE:
        raise ProtocolError("CONNACK flags bits 7-1 are reserved (§3.2.2.1)")
    if code > ConnectReturnCode.NOT_AUTHORIZED:
        raise ProtocolError(f"CONNACK return code {code} is reserved (§3.2.2.3)")
    if flags and code:
        raise ProtocolError("a refusal must not claim a present session (§3.2.2.2)")
    return ConnAck(bool(flags), ConnectReturnCode(code))


# The slot setters of Publish, for the decoder (see the end of _decode_publish).
_SET_PUBLISH_FIELDS = tuple(
    Publish.__dict__[name].__set__
    for name in ("topic", "payload", "qos", "retain", "dup", "packet_id")
)


def _decode_publish(flags: int, data: bytearray, pos: int, end: int) -> Publish:
    # The hot path: _read_string and _read_id are inlined here on purpose.
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3 is malformed (§3.3.1-4)")
    if flags & 0x08 and not qos:
        raise ProtocolError("DUP must be 0 for QoS 0 (§3.3.1-2)")
    start = pos + 2
    stop = start + ((data[pos] << 8) | data[pos + 1] if start <= end else 0)
    if start > end or stop > end:
        raise ProtocolError("the topic name runs past the end of PUBLISH")
    try:
        topic = data[start:stop].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("the topic name is not well-formed UTF-8 (§1.5.3)") from exc
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        if "\x00" in topic:
            raise ProtocolError("the topic name contains U+0000 (§1.5.3-2)")
        validate_topic_name(topic)
    packet_id = None
    if qos:
        packet_id = (data[stop] << 8) | data[stop + 1] if stop + 2 <= end else 0
        if not packet_id:
            raise ProtocolError("PUBLISH with QoS > 0 needs a non-zero packet identifier (§2.3.1)")
        stop += 2
    # A frozen dataclass's __init__ calls object.__setattr__ once per field, which costs
    # about as much as all the decoding above, so the slots are filled through their
    # descriptors instead: the instance is the same, and as frozen, as Publish(...) makes.
    set_topic, set_payload, set_qos, set_retain, set_dup, set_packet_id = _SET_PUBLISH_FIELDS
    packet = object.__new__(Publish)
    set_topic(packet, topic)
    set_payload(packet, bytes(memoryview(data)[stop:end]))  # the payload's only copy
    set_qos(packet, _QOS[qos])
    set_retain(packet, bool(flags & 0x01))
    set_dup(packet, bool(flags & 0x08))
    set_packet_id(packet, packet_id)
    return packet


def _decode_subscribe(data: bytearray, pos: int, end: int) -> Subscribe:
    packet_id = _read_id(data, pos, end)
    pos += 2
    subscriptions = []
    while pos < end:
        topic_filter, pos = _read_string(data, pos, end)
        validate_topic_filter(topic_filter)
        if pos >= end:
            raise ProtocolError("SUBSCRIBE ends before a requested QoS")
        requested = data[pos]
        pos += 1
        if requested > 2:
            raise ProtocolError("requested QoS must be 0-2 with reserved bits 0 (§3.8.3-4)")
        subscriptions.append(Subscription(topic_filter, _QOS[requested]))
    if not subscriptions:
        raise ProtocolError("SUBSCRIBE needs at least one filter (§3.8.3-3)")
    return Subscribe(packet_id, tuple(subscriptions))


def _decode_suback(data: bytearray, pos: int, end: int) -> SubAck:
    packet_id = _read_id(data, pos, end)
    pos += 2
    if pos >= end:
        raise ProtocolError("SUBACK needs at least one return code (§3.9.3)")
    try:
        codes = tuple(_SUBACK_CODES[code] for code in data[pos:end])
    except KeyError as exc:
        raise ProtocolError("SUBACK return codes are 0x00-0x02 or 0x80 (§3.9.3)") from exc
    return SubAck(packet_id, codes)


def _decode_unsubscribe(data: bytearray, pos: int, end: int) -> Unsubscribe:
    packet_id = _read_id(data, pos, end)
    pos += 2
    topic_filters = []
    while pos < end:
        topic_filter, pos = _read_string(data, pos, end)
        validate_topic_filter(topic_filter)
        topic_filters.append(topic_filter)
    if not topic_filters:
        raise ProtocolError("UNSUBSCRIBE needs at least one filter (§3.10.3-2)")
    return Unsubscribe(packet_id, tuple(topic_filters))


def _decode_with_id(
    packet_class: type[PubAck | PubRec | PubRel | PubComp | UnsubAck],
) -> Callable[[bytearray, int, int], Packet]:
    def decode(data: bytearray, pos: int, end: int) -> Packet:
        if end - pos != 2:
            raise ProtocolError("acknowledgements have a remaining length of 2")
        return packet_class(_read_id(data, pos, end))

    return decode


def _decode_empty(packet: Packet) -> Callable[[bytearray, int, int], Packet]:
    def decode(data: bytearray, pos: int, end: int) -> Packet:
        if pos != end:
            raise ProtocolError("PINGREQ, PINGRESP and DISCONNECT have no body")
        return packet

    return decode


# Enum attribute lookups are slow on CPython 3.11, so the hot path compares plain ints.
_PUBLISH = int(PacketType.PUBLISH)

# Each packet type but PUBLISH: the low nibble it must carry (§2.2.2) and its decoder.
_DECODERS: dict[int, tuple[int, Callable[[bytearray, int, int], Packet]]] = {
    PacketType.CONNECT: (0, _decode_connect),
    PacketType.CONNACK: (0, _decode_connack),
    PacketType.PUBACK: (0, _decode_with_id(PubAck)),
    PacketType.PUBREC: (0, _decode_with_id(PubRec)),
    PacketType.PUBREL: (2, _decode_with_id(PubRel)),
    PacketType.PUBCOMP: (0, _decode_with_id(PubComp)),
    PacketType.SUBSCRIBE: (2, _decode_subscribe),
    PacketType.SUBACK: (0, _decode_suback),
    PacketType.UNSUBSCRIBE: (2, _decode_unsubscribe),
    PacketType.UNSUBACK: (0, _decode_with_id(UnsubAck)),
    # The body-less packets have no fields, so one shared instance of each will do.
    PacketType.PINGREQ: (0, _decode_empty(PingReq())),
    PacketType.PINGRESP: (0, _decode_empty(PingResp())),
    PacketType.DISCONNECT: (0, _decode_empty(Disconnect())),
}


def _decode(first: int, data: bytearray, pos: int, end: int) -> Packet:
    packet_type = first >> 4
    if packet_type == _PUBLISH:
        return _decode_publish(first & 0x0F, data, pos, end)
    entry = _DECODERS.get(packet_type)
    if entry is None:
        raise ProtocolError(f"packet type {packet_type} is reserved (§2.2.1)")
    required_flags, decoder = entry
    if first & 0x0F != required_flags:
        raise ProtocolError(f"reserved flag bits of packet type {packet_type} are wrong (§2.2.2)")
    return decoder(data, pos, end)


class PacketReader:
    """Turns a byte stream into packets, one complete packet at a time.

    Feed bytes as they arrive with `feed`, then call `next_packet` until it returns
    ``None`` (or iterate the reader). Bytes are kept in one ``bytearray``, decoded in
    place (a payload is copied once, through a ``memoryview``), and the consumed prefix
    is dropped once per `feed`.

    Once a `ProtocolError` has been raised the stream cannot be resynchronised, so the
    reader raises the same error again on every later call.

    Args:
        max_packet_size: the largest whole packet (fixed header included) accepted. A larger
            one is refused as soon as its length is known, before its body is buffered.
    """

    __slots__ = ("_buffer", "_error", "_pos", "max_packet_size")

    def __init__(self, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self.max_packet_size = max_packet_size
        self._buffer = bytearray()
        self._pos = 0
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet part of a returned packet."""
        return len(self._buffer) - self._pos

    def feed(self, data: bytes) -> None:
        """Append received bytes to the buffer."""
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def next_packet(self) -> Packet | None:
        """Return the next complete packet, or ``None`` if more bytes are needed.

        Raises:
            ProtocolError: the stream is malformed or a packet exceeds ``max_packet_size``.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        size = len(buffer)
        pos = self._pos
        if size - pos < 2:
            return None
        # Remaining Length: at most four varint bytes (§2.2.3).
        index = pos + 1
        length = 0
        shift = 0
        while True:
            if index >= size:
                return None
            byte = buffer[index]
            index += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift == 28:
                raise self._remember(ProtocolError("the remaining length exceeds 4 bytes (§2.2.3)"))
        end = index + length
        if end - pos > self.max_packet_size:
            raise self._remember(
                ProtocolError(
                    f"a {end - pos}-byte packet exceeds the {self.max_packet_size}-byte limit",
                    ProtocolErrorCode.PACKET_TOO_LARGE,
                )
            )
        if end > size:
            return None
        try:
            packet = _decode(buffer[pos], buffer, index, end)
        except ProtocolError as exc:
            self._error = exc
            raise
        if end == size:
            buffer.clear()
            self._pos = 0
        else:
            self._pos = end
        return packet

    def __iter__(self) -> PacketReader:
        return self

    def __next__(self) -> Packet:
        packet = self.next_packet()
        if packet is None:
            raise StopIteration
        return packet

    def _remember(self, error: ProtocolError) -> ProtocolError:
        self._error = error
        return error
