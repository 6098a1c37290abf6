"""The MQTT 3.1.1 encoder: packet values (or a PUBLISH's fields, on the hot path) to wire bytes."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from fleetpki.hub.protocol.packets import (
    MAX_REMAINING_LENGTH,
    ConnAck,
    Connect,
    ConnectReturnCode,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    ProtocolError,
    ProtocolErrorCode,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
)
from fleetpki.hub.protocol.topic_filters import validate_topic_filter, validate_topic_name

__all__ = ["encode", "encode_puback", "encode_pubacks", "encode_publish"]

_PACK_ID = struct.Struct(">H").pack
# A PUBACK as a big-endian 32-bit word, the packet id in its low 16 bits.
_PUBACK_WORD = 0x40020000


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


def encode_pubacks(packet_ids: Sequence[int]) -> bytes:
    """Encode one PUBACK per packet id, in order, as one string of bytes.

    A PUBACK is four bytes (0x40, 0x02, the id), so the lot is one ``struct.pack`` of
    big-endian words: a batch of acknowledgements costs one call, not one per message.

    Raises:
        ProtocolError: an id not in 1..65535 (§2.3.1).
    """
    if not packet_ids:
        return b""
    if not (min(packet_ids) > 0 and max(packet_ids) <= 0xFFFF):
        raise ProtocolError("a packet identifier must be in 1..65535 (§2.3.1)")
    return struct.pack(f">{len(packet_ids)}I", *[_PUBACK_WORD | i for i in packet_ids])


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
