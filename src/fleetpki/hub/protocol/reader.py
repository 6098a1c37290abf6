"""The MQTT 3.1.1 decoder: an incremental reader that turns a byte stream into packet values."""

from __future__ import annotations

import struct
from collections.abc import Callable

from fleetpki.hub.protocol.packets import (
    DEFAULT_MAX_PACKET_SIZE,
    ConnAck,
    Connect,
    ConnectReturnCode,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    ProtocolError,
    ProtocolErrorCode,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    QoS,
    SubAck,
    SubAckReturnCode,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from fleetpki.hub.protocol.topic_filters import validate_topic_filter, validate_topic_name

__all__ = ["PacketReader"]

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

    def peek_type(self) -> int | None:
        """The control packet type of the next packet (§2.2.1), once its first byte is here.

        It lets a server refuse a connection whose first packet is not CONNECT as soon
        as one byte arrives, rather than after the whole packet, or never.
        """
        if len(self._buffer) > self._pos:
            return self._buffer[self._pos] >> 4
        return None

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
