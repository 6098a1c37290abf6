"""The MQTT 3.1.1 codec: known encodings, every malformation refused, and round trips."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpki.errors import ValidationError
from fleetpki.hub.protocol import (
    DEFAULT_MAX_PACKET_SIZE,
    ConnAck,
    Connect,
    ConnectReturnCode,
    Disconnect,
    Packet,
    PacketReader,
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
    encode,
    encode_puback,
    encode_pubacks,
    encode_publish,
    validate_topic_filter,
    validate_topic_name,
)


def decode_all(data: bytes, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> list[Packet]:
    reader = PacketReader(max_packet_size)
    reader.feed(data)
    packets = list(reader)
    assert reader.buffered == 0
    return packets


# --- known encodings ---------------------------------------------------------------------------

# Hand-assembled from the layouts in MQTT 3.1.1 §3.1-§3.14.
KNOWN_ENCODINGS: list[tuple[Packet, bytes]] = [
    (
        Connect("dev1", clean_session=False, keepalive=60, username="h/dev1/?api-version=1"),
        b"\x10\x27\x00\x04MQTT\x04\x80\x00\x3c\x00\x04dev1\x00\x15h/dev1/?api-version=1",
    ),
    (
        Connect("c", clean_session=True, keepalive=0, username="u", password=b"pw"),
        b"\x10\x14\x00\x04MQTT\x04\xc2\x00\x00\x00\x01c\x00\x01u\x00\x02pw",
    ),
    (
        Connect("c", will=Will("w/t", b"bye", QoS.AT_LEAST_ONCE, retain=True)),
        b"\x10\x17\x00\x04MQTT\x04\x2e\x00\x3c\x00\x01c\x00\x03w/t\x00\x03bye",
    ),
    (ConnAck(False, ConnectReturnCode.ACCEPTED), b"\x20\x02\x00\x00"),
    (ConnAck(True, ConnectReturnCode.ACCEPTED), b"\x20\x02\x01\x00"),
    (ConnAck(False, ConnectReturnCode.NOT_AUTHORIZED), b"\x20\x02\x00\x05"),
    (Publish("a/b", b"hi"), b"\x30\x07\x00\x03a/bhi"),
    (
        Publish("a/b", b"hi", QoS.AT_LEAST_ONCE, retain=True, dup=True, packet_id=10),
        b"\x3b\x09\x00\x03a/b\x00\x0ahi",
    ),
    (Publish("t", b"", QoS.EXACTLY_ONCE, packet_id=0xFFFF), b"\x34\x05\x00\x01t\xff\xff"),
    (PubAck(1), b"\x40\x02\x00\x01"),
    (PubRec(2), b"\x50\x02\x00\x02"),
    (PubRel(3), b"\x62\x02\x00\x03"),
    (PubComp(4), b"\x70\x02\x00\x04"),
    (
        Subscribe(5, (Subscription("a/#", QoS.AT_LEAST_ONCE), Subscription("+", QoS.EXACTLY_ONCE))),
        b"\x82\x0c\x00\x05\x00\x03a/#\x01\x00\x01+\x02",
    ),
    (
        SubAck(5, (SubAckReturnCode.GRANTED_QOS_1, SubAckReturnCode.FAILURE)),
        b"\x90\x04\x00\x05\x01\x80",
    ),
    (Unsubscribe(6, ("a/+",)), b"\xa2\x07\x00\x06\x00\x03a/+"),
    (UnsubAck(6), b"\xb0\x02\x00\x06"),
    (PingReq(), b"\xc0\x00"),
    (PingResp(), b"\xd0\x00"),
    (Disconnect(), b"\xe0\x00"),
]


@pytest.mark.parametrize(("packet", "wire"), KNOWN_ENCODINGS)
def test_encode_gives_the_known_bytes(packet: Packet, wire: bytes) -> None:
    assert encode(packet) == wire


@pytest.mark.parametrize(("packet", "wire"), KNOWN_ENCODINGS)
def test_decode_gives_the_known_packet(packet: Packet, wire: bytes) -> None:
    assert decode_all(wire) == [packet]


@pytest.mark.parametrize(
    ("length", "varint"),
    [
        # The boundaries of MQTT 3.1.1 §2.2.3, Table 2.4.
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
    ],
)
def test_remaining_length_varint_boundaries(length: int, varint: bytes) -> None:
    # A PUBLISH whose remaining length is exactly `length` (topic "t": 3 bytes).
    packet = Publish("t", b"x" * (length - 3))
    wire = encode(packet)
    assert wire[1 : 1 + len(varint)] == varint
    assert decode_all(wire, max_packet_size=len(wire)) == [packet]


def test_a_four_byte_varint_at_the_maximum_is_read() -> None:
    reader = PacketReader(max_packet_size=1 << 30)
    reader.feed(b"\x30\xff\xff\xff\x7f")
    assert reader.next_packet() is None  # waiting for 268 MB, not refusing the length


# --- malformed input ---------------------------------------------------------------------------

MALFORMED: list[tuple[str, bytes, ProtocolErrorCode]] = [
    ("reserved packet type 0", b"\x00\x00", ProtocolErrorCode.MALFORMED),
    ("reserved packet type 15", b"\xf0\x00", ProtocolErrorCode.MALFORMED),
    ("five varint bytes", b"\x30\xff\xff\xff\xff\x01", ProtocolErrorCode.MALFORMED),
    ("CONNECT flags nibble", b"\x11\x00", ProtocolErrorCode.MALFORMED),
    ("PUBACK flags nibble", b"\x41\x02\x00\x01", ProtocolErrorCode.MALFORMED),
    ("PUBREL flags 0000", b"\x60\x02\x00\x01", ProtocolErrorCode.MALFORMED),
    ("SUBSCRIBE flags 0000", b"\x80\x06\x00\x01\x00\x01a\x00", ProtocolErrorCode.MALFORMED),
    ("UNSUBSCRIBE flags 0000", b"\xa0\x05\x00\x01\x00\x01a", ProtocolErrorCode.MALFORMED),
    ("PINGREQ flags nibble", b"\xc1\x00", ProtocolErrorCode.MALFORMED),
    ("DISCONNECT flags nibble", b"\xe8\x00", ProtocolErrorCode.MALFORMED),
    (
        "protocol name MQTX",
        b"\x10\x0d\x00\x04MQTX\x04\x02\x00\x3c\x00\x01c",
        ProtocolErrorCode.MALFORMED,
    ),
    (
        "protocol level 5",
        b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x01c",
        ProtocolErrorCode.UNSUPPORTED_PROTOCOL_LEVEL,
    ),
    (
        "MQTT 3.1 (MQIsdp level 3)",
        b"\x10\x0f\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01c",
        ProtocolErrorCode.UNSUPPORTED_PROTOCOL_LEVEL,
    ),
    (
        "reserved connect flag",
        b"\x10\x0d\x00\x04MQTT\x04\x03\x00\x3c\x00\x01c",
        ProtocolErrorCode.MALFORMED,
    ),
    (
        "password without username",
        b"\x10\x11\x00\x04MQTT\x04\x42\x00\x3c\x00\x01c\x00\x02pw",
        ProtocolErrorCode.MALFORMED,
    ),
    ("will QoS 3", b"\x10\x0d\x00\x04MQTT\x04\x1e\x00\x3c\x00\x01c", ProtocolErrorCode.MALFORMED),
    (
        "will QoS without will flag",
        b"\x10\x0d\x00\x04MQTT\x04\x0a\x00\x3c\x00\x01c",
        ProtocolErrorCode.MALFORMED,
    ),
    (
        "will retain without will flag",
        b"\x10\x0d\x00\x04MQTT\x04\x22\x00\x3c\x00\x01c",
        ProtocolErrorCode.MALFORMED,
    ),
    (
        "CONNECT with trailing bytes",
        b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x01cX",
        ProtocolErrorCode.MALFORMED,
    ),
    ("CONNECT cut short", b"\x10\x08\x00\x04MQTT\x04\x02", ProtocolErrorCode.MALFORMED),
    (
        "client id past the end",
        b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x09c",
        ProtocolErrorCode.MALFORMED,
    ),
    ("PUBLISH QoS 3", b"\x36\x05\x00\x01t\x00\x01", ProtocolErrorCode.MALFORMED),
    ("PUBLISH DUP with QoS 0", b"\x38\x03\x00\x01t", ProtocolErrorCode.MALFORMED),
    ("PUBLISH packet id 0", b"\x32\x05\x00\x01t\x00\x00", ProtocolErrorCode.MALFORMED),
    ("PUBLISH QoS 1 without packet id", b"\x32\x03\x00\x01t", ProtocolErrorCode.MALFORMED),
    ("PUBLISH topic with +", b"\x30\x05\x00\x03a/+", ProtocolErrorCode.INVALID_TOPIC),
    ("PUBLISH topic with #", b"\x30\x05\x00\x03a/#", ProtocolErrorCode.INVALID_TOPIC),
    ("PUBLISH empty topic", b"\x30\x02\x00\x00", ProtocolErrorCode.INVALID_TOPIC),
    ("PUBLISH topic with U+0000", b"\x30\x05\x00\x03a\x00b", ProtocolErrorCode.MALFORMED),
    ("PUBLISH topic not UTF-8", b"\x30\x04\x00\x02\xc3\x28", ProtocolErrorCode.MALFORMED),
    ("PUBLISH topic a surrogate", b"\x30\x05\x00\x03\xed\xa0\x80", ProtocolErrorCode.MALFORMED),
    ("PUBLISH topic past the end", b"\x30\x03\x00\x05a", ProtocolErrorCode.MALFORMED),
    ("PUBLISH without topic length", b"\x30\x01\x00", ProtocolErrorCode.MALFORMED),
    ("PUBACK too long", b"\x40\x03\x00\x01\x00", ProtocolErrorCode.MALFORMED),
    ("PUBACK too short", b"\x40\x01\x00", ProtocolErrorCode.MALFORMED),
    ("PUBACK packet id 0", b"\x40\x02\x00\x00", ProtocolErrorCode.MALFORMED),
    ("CONNACK reserved flags", b"\x20\x02\x02\x00", ProtocolErrorCode.MALFORMED),
    ("CONNACK code 6", b"\x20\x02\x00\x06", ProtocolErrorCode.MALFORMED),
    ("CONNACK refusal with session", b"\x20\x02\x01\x05", ProtocolErrorCode.MALFORMED),
    ("CONNACK too long", b"\x20\x03\x00\x00\x00", ProtocolErrorCode.MALFORMED),
    ("SUBSCRIBE without filters", b"\x82\x02\x00\x01", ProtocolErrorCode.MALFORMED),
    ("SUBSCRIBE QoS 3", b"\x82\x06\x00\x01\x00\x01a\x03", ProtocolErrorCode.MALFORMED),
    ("SUBSCRIBE reserved bits", b"\x82\x06\x00\x01\x00\x01a\x41", ProtocolErrorCode.MALFORMED),
    ("SUBSCRIBE without QoS", b"\x82\x05\x00\x01\x00\x01a", ProtocolErrorCode.MALFORMED),
    ("SUBSCRIBE packet id 0", b"\x82\x06\x00\x00\x00\x01a\x01", ProtocolErrorCode.MALFORMED),
    ("SUBSCRIBE a/#/b", b"\x82\x0a\x00\x01\x00\x05a/#/b\x01", ProtocolErrorCode.INVALID_TOPIC),
    ("SUBSCRIBE a#", b"\x82\x07\x00\x01\x00\x02a#\x01", ProtocolErrorCode.INVALID_TOPIC),
    ("SUBSCRIBE a+/b", b"\x82\x09\x00\x01\x00\x04a+/b\x01", ProtocolErrorCode.INVALID_TOPIC),
    ("SUBSCRIBE empty filter", b"\x82\x05\x00\x01\x00\x00\x01", ProtocolErrorCode.INVALID_TOPIC),
    ("SUBACK without codes", b"\x90\x02\x00\x01", ProtocolErrorCode.MALFORMED),
    ("SUBACK code 3", b"\x90\x03\x00\x01\x03", ProtocolErrorCode.MALFORMED),
    ("UNSUBSCRIBE without filters", b"\xa2\x02\x00\x01", ProtocolErrorCode.MALFORMED),
    ("UNSUBSCRIBE bad filter", b"\xa2\x06\x00\x01\x00\x02#a", ProtocolErrorCode.INVALID_TOPIC),
    ("PINGREQ with a body", b"\xc0\x01\x00", ProtocolErrorCode.MALFORMED),
    ("DISCONNECT with a body", b"\xe0\x01\x00", ProtocolErrorCode.MALFORMED),
]


@pytest.mark.parametrize(
    ("wire", "code"), [(wire, code) for _, wire, code in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_input_raises_protocol_error(wire: bytes, code: ProtocolErrorCode) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_all(wire)
    assert caught.value.code == code
    assert isinstance(caught.value, ValidationError)
    assert str(code).startswith("mqtt.")


def test_a_reader_stays_failed_after_an_error() -> None:
    reader = PacketReader()
    reader.feed(b"\xf0\x00" + encode(PingReq()))
    with pytest.raises(ProtocolError) as first:
        reader.next_packet()
    with pytest.raises(ProtocolError) as second:
        reader.next_packet()
    assert second.value is first.value


def test_packets_before_a_malformed_one_are_delivered() -> None:
    reader = PacketReader()
    reader.feed(encode(PingReq()) + b"\xf0\x00")
    assert reader.next_packet() == PingReq()
    with pytest.raises(ProtocolError):
        reader.next_packet()


def test_an_oversized_packet_is_refused_from_its_header_alone() -> None:
    reader = PacketReader(max_packet_size=1000)
    # Only the fixed header of a ~1 MB PUBLISH has arrived; it is refused already.
    reader.feed(b"\x30\x80\x80\x40")
    with pytest.raises(ProtocolError) as caught:
        reader.next_packet()
    assert caught.value.code == ProtocolErrorCode.PACKET_TOO_LARGE


def test_the_default_limit_admits_azures_largest_message() -> None:
    topic = "devices/dev1/messages/events/%24.mid=" + "m" * 200
    packet = Publish(topic, b"\xab" * 262_144, QoS.AT_LEAST_ONCE, packet_id=1)
    assert decode_all(encode(packet)) == [packet]
    with pytest.raises(ProtocolError):
        decode_all(encode(Publish(topic, b"\xab" * DEFAULT_MAX_PACKET_SIZE)))


# --- encoding refuses what the wire cannot carry -------------------------------------------------

UNENCODABLE: list[tuple[str, Packet]] = [
    ("QoS 1 without packet id", Publish("t", b"", QoS.AT_LEAST_ONCE)),
    ("QoS 0 with packet id", Publish("t", b"", QoS.AT_MOST_ONCE, packet_id=1)),
    ("QoS 0 with DUP", Publish("t", b"", dup=True)),
    ("packet id 0", PubAck(0)),
    ("packet id 65536", PubAck(65_536)),
    ("wildcard topic", Publish("a/#", b"")),
    ("empty topic", Publish("", b"")),
    ("U+0000 in a string", Connect("a\x00b")),
    ("lone surrogate", Connect("\ud800")),
    ("string over 65535 bytes", Connect("x" * 65_536)),
    ("password without username", Connect("c", password=b"pw")),
    ("keepalive over 65535", Connect("c", keepalive=65_536)),
    ("refusal with session", ConnAck(True, ConnectReturnCode.NOT_AUTHORIZED)),
    ("SUBSCRIBE without filters", Subscribe(1, ())),
    ("SUBSCRIBE bad filter", Subscribe(1, (Subscription("a#", QoS.AT_MOST_ONCE),))),
    ("SUBACK without codes", SubAck(1, ())),
    ("UNSUBSCRIBE without filters", Unsubscribe(1, ())),
]


@pytest.mark.parametrize("packet", [p for _, p in UNENCODABLE], ids=[n for n, _ in UNENCODABLE])
def test_encode_refuses_illegal_packets(packet: Packet) -> None:
    with pytest.raises(ProtocolError):
        encode(packet)


@pytest.mark.parametrize("packet_id", [0, -1, 65_536])
def test_the_fast_puback_encoder_checks_the_id(packet_id: int) -> None:
    with pytest.raises(ProtocolError):
        encode_puback(packet_id)


def test_the_fast_encoders_agree_with_encode() -> None:
    assert encode_puback(513) == encode(PubAck(513))
    packet = Publish("a/b", b"x", QoS.AT_LEAST_ONCE, retain=True, dup=True, packet_id=9)
    assert encode_publish("a/b", b"x", 1, True, True, 9) == encode(packet)


def test_decoded_packets_are_frozen() -> None:
    [packet] = decode_all(encode(Publish("t", b"x", QoS.AT_LEAST_ONCE, packet_id=1)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        packet.topic = "other"  # type: ignore[misc]
    assert hash(packet) == hash(Publish("t", b"x", QoS.AT_LEAST_ONCE, packet_id=1))


# --- topics (§4.7) --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic_filter",
    ["#", "+", "a/#", "+/+", "/+", "a/+/c/#", "sport/tennis/+", "$iothub/twin/res/#", "a//b"],
)
def test_valid_topic_filters(topic_filter: str) -> None:
    assert validate_topic_filter(topic_filter) is None  # accepted: no ProtocolError


@pytest.mark.parametrize("topic_filter", ["", "a#", "#/a", "a/#/b", "a+", "+a/b", "a/b+", "##"])
def test_invalid_topic_filters(topic_filter: str) -> None:
    with pytest.raises(ProtocolError):
        validate_topic_filter(topic_filter)


@pytest.mark.parametrize("topic", ["", "a/+", "#", "a#b"])
def test_invalid_topic_names(topic: str) -> None:
    with pytest.raises(ProtocolError):
        validate_topic_name(topic)


# --- incremental reading -------------------------------------------------------------------------


def test_every_split_of_a_stream_gives_the_same_packets() -> None:
    packets = [packet for packet, _ in KNOWN_ENCODINGS]
    stream = b"".join(encode(packet) for packet in packets)
    for cut in range(len(stream) + 1):
        reader = PacketReader()
        reader.feed(stream[:cut])
        got = list(reader)
        reader.feed(stream[cut:])
        got += list(reader)
        assert got == packets, cut


def test_byte_at_a_time() -> None:
    packets = [packet for packet, _ in KNOWN_ENCODINGS]
    reader = PacketReader()
    got: list[Packet] = []
    for byte in b"".join(encode(packet) for packet in packets):
        reader.feed(bytes((byte,)))
        got += list(reader)
    assert got == packets
    assert reader.buffered == 0


# --- Hypothesis ----------------------------------------------------------------------------------

# MQTT strings: any Unicode scalar value but U+0000 (§1.5.3), UTF-8 at most 65535 bytes.
mqtt_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40
)
packet_ids = st.integers(1, 0xFFFF)
qos_levels = st.sampled_from(QoS)
binary = st.binary(max_size=300)

topic_level = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00/+#"), max_size=8
)
topic_names = st.lists(topic_level, min_size=1, max_size=5).map("/".join).filter(bool)
topic_filters = (
    st.lists(st.one_of(topic_level, st.just("+")), min_size=1, max_size=5)
    .flatmap(lambda levels: st.sampled_from(["/".join(levels), "/".join([*levels, "#"])]))
    .filter(bool)
)


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(qos_levels)
    return Publish(
        draw(topic_names),
        draw(binary),
        qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
        packet_id=draw(packet_ids) if qos else None,
    )


@st.composite
def connects(draw: st.DrawFn) -> Connect:
    username = draw(st.none() | mqtt_text)
    will = draw(st.none() | st.builds(Will, topic_names, binary, qos_levels, st.booleans()))
    return Connect(
        draw(mqtt_text),
        clean_session=draw(st.booleans()),
        keepalive=draw(st.integers(0, 0xFFFF)),
        username=username,
        password=draw(st.none() | binary) if username is not None else None,
        will=will,
    )


@st.composite
def connacks(draw: st.DrawFn) -> ConnAck:
    code = draw(st.sampled_from(ConnectReturnCode))
    present = draw(st.booleans()) if code == ConnectReturnCode.ACCEPTED else False
    return ConnAck(present, code)


packets: st.SearchStrategy[Packet] = st.one_of(
    connects(),
    connacks(),
    publishes(),
    st.builds(PubAck, packet_ids),
    st.builds(PubRec, packet_ids),
    st.builds(PubRel, packet_ids),
    st.builds(PubComp, packet_ids),
    st.builds(
        Subscribe,
        packet_ids,
        st.lists(st.builds(Subscription, topic_filters, qos_levels), min_size=1, max_size=4).map(
            tuple
        ),
    ),
    st.builds(
        SubAck,
        packet_ids,
        st.lists(st.sampled_from(SubAckReturnCode), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(Unsubscribe, packet_ids, st.lists(topic_filters, min_size=1, max_size=4).map(tuple)),
    st.builds(UnsubAck, packet_ids),
    st.just(PingReq()),
    st.just(PingResp()),
    st.just(Disconnect()),
)


@pytest.mark.parametrize(
    "strategy",
    [
        connects(),
        connacks(),
        publishes(),
        st.builds(PubAck, packet_ids),
        st.builds(PubRec, packet_ids),
        st.builds(PubRel, packet_ids),
        st.builds(PubComp, packet_ids),
        st.builds(UnsubAck, packet_ids),
        packets,
    ],
    ids=[
        "connect",
        "connack",
        "publish",
        "puback",
        "pubrec",
        "pubrel",
        "pubcomp",
        "unsuback",
        "any",
    ],
)
def test_round_trip_per_type(strategy: st.SearchStrategy[Packet]) -> None:
    @given(strategy)
    @settings(max_examples=150)
    def round_trip(packet: Packet) -> None:
        assert decode_all(encode(packet)) == [packet]

    round_trip()


@given(st.lists(packets, max_size=6), st.data())
def test_round_trip_of_a_stream_cut_anywhere(batch: list[Packet], data: st.DataObject) -> None:
    stream = b"".join(encode(packet) for packet in batch)
    cut = data.draw(st.integers(0, len(stream)))
    reader = PacketReader()
    reader.feed(stream[:cut])
    got = list(reader)
    reader.feed(stream[cut:])
    assert got + list(reader) == batch


@given(st.binary(max_size=400))
@settings(max_examples=400)
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    reader = PacketReader(max_packet_size=300)
    reader.feed(data)
    with contextlib.suppress(ProtocolError):
        for packet in reader:
            encode(packet)  # anything decoded must also be encodable


@given(packets, st.binary(min_size=1, max_size=20))
def test_valid_packet_followed_by_noise_raises_only_protocol_error(
    packet: Packet, noise: bytes
) -> None:
    reader = PacketReader()
    reader.feed(encode(packet) + noise)
    assert reader.next_packet() == packet
    with contextlib.suppress(ProtocolError):
        list(reader)


# --- the public surface ----------------------------------------------------------------------------


def test_the_package_exports_its_modules_whole() -> None:
    import fleetpki.hub.protocol as protocol
    from fleetpki.hub.protocol import (
        encoder,
        events,
        packets,
        reader,
        server_connection,
        session,
        topic_filters,
    )

    modules = (encoder, events, packets, reader, server_connection, session, topic_filters)
    owner = {name: module for module in modules for name in module.__all__}
    assert sum(len(module.__all__) for module in modules) == len(owner)  # no name twice
    assert sorted(protocol.__all__) == sorted(owner)
    for name in protocol.__all__:
        assert getattr(protocol, name) is getattr(owner[name], name)


@given(st.lists(st.integers(1, 0xFFFF), max_size=50))
def test_pubacks_of_a_batch_are_the_pubacks_one_by_one(packet_ids: list[int]) -> None:
    assert encode_pubacks(packet_ids) == b"".join(encode_puback(i) for i in packet_ids)


@pytest.mark.parametrize("packet_ids", [[0], [1, 0x10000], [5, -1]])
def test_pubacks_refuse_ids_outside_the_range(packet_ids: list[int]) -> None:
    with pytest.raises(ProtocolError):
        encode_pubacks(packet_ids)
