"""The broker-side connection state machine, driven by a tiny client over an in-memory link."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpki.hub.protocol import (
    MAX_KEEPALIVE_SECONDS,
    ConnAck,
    Connect,
    ConnectionState,
    ConnectionStateError,
    ConnectRequested,
    ConnectReturnCode,
    Disconnect,
    Disconnected,
    Event,
    Packet,
    PacketReader,
    PingReceived,
    PingReq,
    PingResp,
    ProtocolError,
    ProtocolErrorCode,
    ProtocolViolation,
    PubAck,
    PubAckReceived,
    PubComp,
    Publish,
    Published,
    PubRec,
    PubRel,
    QoS,
    ServerConnection,
    SessionState,
    SubAck,
    SubAckReturnCode,
    Subscribe,
    Subscribed,
    Subscription,
    TimedOut,
    UnsubAck,
    Unsubscribe,
    Unsubscribed,
    Will,
    encode,
    topic_matches,
)

C2D_FILTER = "devices/dev1/messages/devicebound/#"
C2D_TOPIC = "devices/dev1/messages/devicebound/%24.mid=1"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Link:
    """A server connection and a minimal client joined in memory (h11's ConnectionPair)."""

    clock: FakeClock = field(default_factory=FakeClock)
    server: ServerConnection = field(init=False)
    client_reader: PacketReader = field(default_factory=PacketReader)

    def __post_init__(self) -> None:
        self.server = ServerConnection(clock=self.clock)

    def client_sends(self, *packets: Packet) -> list[Event]:
        """The client writes packets; return what the server makes of them."""
        self.server.receive_data(b"".join(encode(packet) for packet in packets))
        return list(self.server.events())

    def client_receives(self, data: bytes) -> list[Packet]:
        """The server's bytes arrive at the client; return the packets they hold."""
        self.client_reader.feed(data)
        return list(self.client_reader)

    def connect(
        self, client_id: str = "dev1", *, clean: bool = False, session: SessionState | None = None
    ) -> list[Packet]:
        """CONNECT, accept, and return what the client receives."""
        [event] = self.client_sends(Connect(client_id, clean_session=clean, keepalive=60))
        assert isinstance(event, ConnectRequested)
        return self.client_receives(self.server.accept(session))


# --- connecting ----------------------------------------------------------------------------------


def test_connect_then_accept() -> None:
    link = Link()
    will = Will("w", b"gone")
    [event] = link.client_sends(
        Connect("dev1", clean_session=False, keepalive=30, username="h/dev1/?a=1", will=will)
    )
    assert event == ConnectRequested("dev1", "h/dev1/?a=1", None, False, 30, will)
    assert link.server.state is ConnectionState.CONNECT_RECEIVED
    assert link.client_receives(link.server.accept()) == [
        ConnAck(False, ConnectReturnCode.ACCEPTED)
    ]
    assert link.server.state is ConnectionState.CONNECTED
    assert link.server.session is not None
    assert link.server.session.client_id == "dev1"


@pytest.mark.parametrize(
    "code", [ConnectReturnCode.NOT_AUTHORIZED, ConnectReturnCode.SERVER_UNAVAILABLE]
)
def test_refuse_sends_the_code_and_closes(code: ConnectReturnCode) -> None:
    link = Link()
    link.client_sends(Connect("dev1"))
    assert link.client_receives(link.server.refuse(code)) == [ConnAck(False, code)]
    assert link.server.state is ConnectionState.CLOSED


def test_input_after_connect_waits_for_the_answer() -> None:
    # §3.1.4-5: nothing sent after CONNECT is processed before the CONNECT is accepted.
    link = Link()
    link.server.receive_data(encode(Connect("dev1")) + encode(PingReq()))
    events = link.server.events()
    assert isinstance(next(events), ConnectRequested)
    assert link.server.next_event() is None  # held back while we authenticate
    link.server.accept()
    assert list(events) == [PingReceived()]


def test_input_after_a_refused_connect_is_never_processed() -> None:
    link = Link()
    link.server.receive_data(encode(Connect("dev1")) + encode(Publish("t", b"x")))
    assert isinstance(link.server.next_event(), ConnectRequested)
    link.server.refuse(ConnectReturnCode.NOT_AUTHORIZED)
    assert link.server.next_event() is None


def test_flooding_before_the_connack_is_a_violation() -> None:
    link = Link()
    link.server = ServerConnection(clock=link.clock, max_packet_size=100)
    link.client_sends(Connect("dev1"))
    link.server.receive_data(encode(Publish("t", b"x" * 200)))
    [event] = list(link.server.events())
    assert isinstance(event, ProtocolViolation)
    assert event.code == ProtocolErrorCode.PACKET_TOO_LARGE


@pytest.mark.parametrize(
    "first",
    [PingReq(), Publish("t", b"x"), Subscribe(1, (Subscription("t", QoS.AT_MOST_ONCE),))],
    ids=["pingreq", "publish", "subscribe"],
)
def test_first_packet_must_be_connect(first: Packet) -> None:
    link = Link()
    [event] = link.client_sends(first)
    assert isinstance(event, ProtocolViolation)
    assert (event.code, event.reply, event.will) == (ProtocolErrorCode.UNEXPECTED_PACKET, b"", None)
    assert link.server.state is ConnectionState.CLOSED


def test_unsupported_protocol_level_gets_connack_1() -> None:
    link = Link()
    link.server.receive_data(b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x01c")
    [event] = list(link.server.events())
    assert isinstance(event, ProtocolViolation)
    assert event.code == ProtocolErrorCode.UNSUPPORTED_PROTOCOL_LEVEL
    assert link.client_receives(event.reply) == [
        ConnAck(False, ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION)
    ]


def test_empty_client_id_without_clean_session_gets_connack_2() -> None:
    link = Link()
    [event] = link.client_sends(Connect("", clean_session=False))
    assert isinstance(event, ProtocolViolation)
    assert event.code == ProtocolErrorCode.IDENTIFIER_REJECTED
    assert link.client_receives(event.reply) == [
        ConnAck(False, ConnectReturnCode.IDENTIFIER_REJECTED)
    ]


def test_malformed_bytes_are_a_violation_without_reply() -> None:
    link = Link()
    link.server.receive_data(b"\xf0\x00")
    [event] = list(link.server.events())
    assert isinstance(event, ProtocolViolation)
    assert (event.code, event.reply) == (ProtocolErrorCode.MALFORMED, b"")
    assert link.server.next_event() is None


# --- connected: violations -----------------------------------------------------------------------

VIOLATIONS: list[tuple[str, Packet, ProtocolErrorCode]] = [
    ("second CONNECT", Connect("dev1"), ProtocolErrorCode.UNEXPECTED_PACKET),
    (
        "QoS 2 PUBLISH",
        Publish("t", b"", QoS.EXACTLY_ONCE, packet_id=1),
        ProtocolErrorCode.QOS_NOT_SUPPORTED,
    ),
    ("PUBREC", PubRec(1), ProtocolErrorCode.UNEXPECTED_PACKET),
    ("PUBREL", PubRel(1), ProtocolErrorCode.UNEXPECTED_PACKET),
    ("PUBCOMP", PubComp(1), ProtocolErrorCode.UNEXPECTED_PACKET),
    ("CONNACK", ConnAck(False, ConnectReturnCode.ACCEPTED), ProtocolErrorCode.UNEXPECTED_PACKET),
    ("SUBACK", SubAck(1, (SubAckReturnCode.GRANTED_QOS_0,)), ProtocolErrorCode.UNEXPECTED_PACKET),
    ("UNSUBACK", UnsubAck(1), ProtocolErrorCode.UNEXPECTED_PACKET),
    ("PINGRESP", PingResp(), ProtocolErrorCode.UNEXPECTED_PACKET),
]


@pytest.mark.parametrize(
    ("packet", "code"), [(p, c) for _, p, c in VIOLATIONS], ids=[n for n, _, _ in VIOLATIONS]
)
def test_violations_once_connected(packet: Packet, code: ProtocolErrorCode) -> None:
    link = Link()
    link.client_sends(Connect("dev1", will=Will("w", b"bye")))
    link.server.accept()
    [event] = link.client_sends(packet)
    assert isinstance(event, ProtocolViolation)
    assert event.code == code
    assert event.will == Will("w", b"bye")  # §3.1.2.5: a broken connection publishes the Will
    assert link.server.state is ConnectionState.CLOSED
    assert link.client_sends(PingReq()) == []


# --- connected: traffic --------------------------------------------------------------------------


def test_subscribe_grants_at_most_qos_1_by_default() -> None:
    link = Link()
    link.connect()
    request = (
        Subscription(C2D_FILTER, QoS.AT_LEAST_ONCE),
        Subscription("$iothub/twin/res/#", QoS.EXACTLY_ONCE),
        Subscription("$iothub/methods/POST/#", QoS.AT_MOST_ONCE),
    )
    [event] = link.client_sends(Subscribe(7, request))
    assert event == Subscribed(7, request)
    assert link.client_receives(link.server.suback(7)) == [
        SubAck(
            7,
            (
                SubAckReturnCode.GRANTED_QOS_1,
                SubAckReturnCode.GRANTED_QOS_1,
                SubAckReturnCode.GRANTED_QOS_0,
            ),
        )
    ]
    assert link.server.session is not None
    assert link.server.session.subscriptions == {
        C2D_FILTER: QoS.AT_LEAST_ONCE,
        "$iothub/twin/res/#": QoS.AT_LEAST_ONCE,
        "$iothub/methods/POST/#": QoS.AT_MOST_ONCE,
    }


def test_refused_subscriptions_are_not_recorded() -> None:
    link = Link()
    link.connect()
    link.client_sends(Subscribe(1, (Subscription("devices/other/#", QoS.AT_LEAST_ONCE),)))
    link.server.suback(1, [SubAckReturnCode.FAILURE])
    assert link.server.session is not None
    assert link.server.session.subscriptions == {}


def test_suback_misuse_raises() -> None:
    link = Link()
    link.connect()
    with pytest.raises(ConnectionStateError):
        link.server.suback(99)
    link.client_sends(Subscribe(1, (Subscription("a", QoS.AT_MOST_ONCE),)))
    with pytest.raises(ConnectionStateError):
        link.server.suback(1, [])
    link.server.suback(1)  # still answerable after the wrong call


def test_unsubscribe_drops_the_filter() -> None:
    link = Link()
    link.connect()
    link.client_sends(Subscribe(1, (Subscription(C2D_FILTER, QoS.AT_LEAST_ONCE),)))
    link.server.suback(1)
    [event] = link.client_sends(Unsubscribe(2, (C2D_FILTER, "never/subscribed")))
    assert event == Unsubscribed(2, (C2D_FILTER, "never/subscribed"))
    assert link.client_receives(link.server.unsuback(2)) == [UnsubAck(2)]
    assert link.server.session is not None
    assert link.server.session.subscriptions == {}


def test_client_publish_qos1_and_puback() -> None:
    link = Link()
    link.connect()
    message = Publish("devices/dev1/messages/events/", b"{}", QoS.AT_LEAST_ONCE, packet_id=3)
    [event] = link.client_sends(message)
    assert isinstance(event, Published)
    assert (event.topic, event.payload, event.qos, event.packet_id) == (
        message.topic,
        b"{}",
        QoS.AT_LEAST_ONCE,
        3,
    )
    assert (event.retain, event.dup, event.packet) == (False, False, message)
    assert link.client_receives(link.server.puback(3)) == [PubAck(3)]


def test_server_publish_qos1_waits_for_puback() -> None:
    link = Link()
    link.connect()
    [delivered] = link.client_receives(link.server.send_publish(C2D_TOPIC, b"hi", tag="lock-1"))
    assert isinstance(delivered, Publish)
    assert (delivered.qos, delivered.dup) == (QoS.AT_LEAST_ONCE, False)
    assert delivered.packet_id is not None
    session = link.server.session
    assert session is not None
    assert [m.packet_id for m in session.inflight] == [delivered.packet_id]
    [event] = link.client_sends(PubAck(delivered.packet_id))
    assert isinstance(event, PubAckReceived)
    assert (event.message.packet_id, event.message.tag) == (delivered.packet_id, "lock-1")
    assert session.inflight == ()


def test_a_puback_for_an_unknown_id_is_ignored() -> None:
    link = Link()
    link.connect()
    assert link.client_sends(PubAck(42), PingReq()) == [PingReceived()]


def test_server_publish_qos0_is_not_tracked() -> None:
    link = Link()
    link.connect()
    data = link.server.send_publish("$iothub/methods/POST/m/?$rid=1", b"{}", QoS.AT_MOST_ONCE)
    assert link.client_receives(data) == [Publish("$iothub/methods/POST/m/?$rid=1", b"{}")]
    assert link.server.session is not None
    assert link.server.session.inflight == ()


@pytest.mark.parametrize("topic", ["", "devices/+/x", "a/#"])
def test_an_invalid_topic_leaves_nothing_in_flight(topic: str) -> None:
    link = Link()
    link.connect()
    with pytest.raises(ProtocolError):
        link.server.send_publish(topic, b"")
    with pytest.raises(ProtocolError):
        SessionState("dev1").queue(topic, b"")
    assert link.server.session is not None
    assert link.server.session.inflight == ()


def test_server_never_sends_qos2() -> None:
    link = Link()
    link.connect()
    with pytest.raises(ConnectionStateError):
        link.server.send_publish("t", b"", QoS.EXACTLY_ONCE)


def test_ping() -> None:
    link = Link()
    link.connect()
    assert link.client_sends(PingReq()) == [PingReceived()]
    assert link.client_receives(link.server.pingresp()) == [PingResp()]


def test_disconnect_discards_the_will() -> None:
    link = Link()
    link.client_sends(Connect("dev1", will=Will("w", b"bye")))
    link.server.accept()
    assert link.client_sends(Disconnect()) == [Disconnected()]
    assert link.server.state is ConnectionState.CLOSED
    assert link.server.close() is None


def test_close_while_connected_returns_the_will() -> None:
    link = Link()
    link.client_sends(Connect("dev1", will=Will("w", b"bye")))
    link.server.accept()
    assert link.server.close() == Will("w", b"bye")
    assert link.server.close() is None  # idempotent


def test_one_byte_at_a_time() -> None:
    link = Link()
    stream = b"".join(
        encode(p)
        for p in (
            Connect("dev1"),
            Publish("a", b"1", QoS.AT_LEAST_ONCE, packet_id=1),
            PingReq(),
            Disconnect(),
        )
    )
    events: list[Event] = []
    for byte in stream:
        link.server.receive_data(bytes((byte,)))
        for event in link.server.events():
            events.append(event)
            if isinstance(event, ConnectRequested):
                link.server.accept()
    assert [type(e) for e in events] == [ConnectRequested, Published, PingReceived, Disconnected]


METHODS_BEFORE_CONNECT = [
    ("accept", lambda s: s.accept()),
    ("refuse", lambda s: s.refuse(ConnectReturnCode.NOT_AUTHORIZED)),
    ("send_publish", lambda s: s.send_publish("t", b"")),
    ("puback", lambda s: s.puback(1)),
    ("pingresp", lambda s: s.pingresp()),
    ("unsuback", lambda s: s.unsuback(1)),
]


@pytest.mark.parametrize(
    "call", [c for _, c in METHODS_BEFORE_CONNECT], ids=[n for n, _ in METHODS_BEFORE_CONNECT]
)
def test_answers_out_of_turn_raise(call: object) -> None:
    server = ServerConnection(clock=FakeClock())
    with pytest.raises(ConnectionStateError):
        call(server)  # type: ignore[operator]


def test_refuse_needs_a_refusal_code() -> None:
    link = Link()
    link.client_sends(Connect("dev1"))
    with pytest.raises(ConnectionStateError):
        link.server.refuse(ConnectReturnCode.ACCEPTED)


def test_accept_twice_raises() -> None:
    link = Link()
    link.connect()
    with pytest.raises(ConnectionStateError):
        link.server.accept()


def test_a_session_of_another_client_is_refused() -> None:
    link = Link()
    link.client_sends(Connect("dev1"))
    with pytest.raises(ConnectionStateError):
        link.server.accept(SessionState("dev2"))


# --- persistent sessions (§3.1.2.4, §4.4) ---------------------------------------------------------


def test_persistent_session_redelivers_with_dup_and_keeps_subscriptions() -> None:
    first = Link()
    first.connect(clean=False)
    first.client_sends(Subscribe(1, (Subscription(C2D_FILTER, QoS.AT_LEAST_ONCE),)))
    first.server.suback(1)
    [sent] = first.client_receives(first.server.send_publish(C2D_TOPIC, b"hello"))
    assert isinstance(sent, Publish)
    session = first.server.session
    assert session is not None
    first.server.close()  # the link drops before the device acknowledges

    # The Azure SDK reconnects with CleanSession=0 and never re-subscribes.
    second = Link()
    received = second.connect(clean=False, session=session)
    assert received == [
        ConnAck(True, ConnectReturnCode.ACCEPTED),
        Publish(C2D_TOPIC, b"hello", QoS.AT_LEAST_ONCE, dup=True, packet_id=sent.packet_id),
    ]
    assert session.subscription_qos(C2D_TOPIC) == QoS.AT_LEAST_ONCE
    [event] = second.client_sends(PubAck(sent.packet_id or 0))
    assert isinstance(event, PubAckReceived)
    assert session.inflight == ()


def test_messages_queued_while_offline_go_out_without_dup_on_reattach() -> None:
    session = SessionState("dev1")
    queued = session.queue(C2D_TOPIC, b"while you were away", tag="t1")
    link = Link()
    received = link.connect(clean=False, session=session)
    assert received == [
        ConnAck(True, ConnectReturnCode.ACCEPTED),
        Publish(C2D_TOPIC, b"while you were away", QoS.AT_LEAST_ONCE, packet_id=queued.packet_id),
    ]
    # Not acknowledged: the next reconnection re-sends it, now as a duplicate.
    link.server.close()
    again = Link().connect(clean=False, session=session)
    assert isinstance(again[1], Publish)
    assert again[1].dup


def test_redelivery_keeps_the_original_order() -> None:
    session = SessionState("dev1")
    ids = [session.queue(f"t/{n}", b"").packet_id for n in range(5)]
    received = Link().connect(clean=False, session=session)[1:]
    assert [p.packet_id for p in received if isinstance(p, Publish)] == ids


def test_clean_session_discards_the_old_one() -> None:
    session = SessionState("dev1")
    session.subscriptions[C2D_FILTER] = QoS.AT_LEAST_ONCE
    session.queue(C2D_TOPIC, b"stale")
    received = Link().connect(clean=True, session=session)
    assert received == [ConnAck(False, ConnectReturnCode.ACCEPTED)]
    assert session.subscriptions == {}
    assert session.inflight == ()


def test_packet_ids_wrap_and_skip_those_in_flight() -> None:
    session = SessionState("dev1")
    first = session.queue("t", b"")
    assert first.packet_id == 1
    for _ in range(65_533):
        session._inflight.pop(session.queue("t", b"").packet_id)
    last = session.queue("t", b"")
    assert last.packet_id == 65_535
    # The counter wraps to 1, which is still in flight, so 2 comes next.
    assert session.queue("t", b"").packet_id == 2


def test_a_full_inflight_table_raises() -> None:
    session = SessionState("dev1")
    for _ in range(65_535):
        session.queue("t", b"")
    with pytest.raises(ConnectionStateError):
        session.queue("t", b"")


# --- keepalive (§3.1.2.10) ------------------------------------------------------------------------


def test_keepalive_expires_at_one_and_a_half_times() -> None:
    link = Link()
    link.client_sends(Connect("dev1", keepalive=10, will=Will("w", b"bye")))
    link.server.accept()
    assert link.server.deadline == link.clock.now + 15
    link.clock.now += 14.9
    assert link.server.check_deadline() is None
    link.clock.now += 0.1
    assert link.server.check_deadline() == TimedOut(
        ProtocolErrorCode.KEEPALIVE_TIMEOUT, Will("w", b"bye")
    )
    assert link.server.state is ConnectionState.CLOSED
    assert link.server.deadline is None


def test_any_packet_moves_the_keepalive_deadline() -> None:
    link = Link()
    link.client_sends(Connect("dev1", keepalive=10))
    link.server.accept()
    link.clock.now += 10
    assert link.client_sends(PingReq()) == [PingReceived()]
    link.clock.now += 10
    assert link.server.check_deadline() is None
    assert link.server.deadline == link.clock.now + 5


@pytest.mark.parametrize(
    ("asked", "limit", "in_force"),
    [
        (60, MAX_KEEPALIVE_SECONDS, 60.0),
        (0, MAX_KEEPALIVE_SECONDS, MAX_KEEPALIVE_SECONDS),
        (65_535, MAX_KEEPALIVE_SECONDS, MAX_KEEPALIVE_SECONDS),
        (0, None, 0.0),
        (65_535, None, 65_535.0),
    ],
)
def test_keepalive_in_force(asked: int, limit: float | None, in_force: float) -> None:
    clock = FakeClock()
    server = ServerConnection(clock=clock, max_keepalive=limit)
    server.receive_data(encode(Connect("dev1", keepalive=asked)))
    assert isinstance(server.next_event(), ConnectRequested)
    server.accept()
    assert server.keepalive == in_force
    assert server.deadline == (None if in_force == 0 else clock.now + 1.5 * in_force)


def test_connect_must_arrive_in_time() -> None:
    clock = FakeClock()
    server = ServerConnection(clock=clock, connect_timeout=5)
    assert server.deadline == clock.now + 5
    clock.now += 5
    assert server.check_deadline() == TimedOut(ProtocolErrorCode.CONNECT_TIMEOUT, None)


def test_no_deadline_while_authenticating() -> None:
    link = Link()
    link.client_sends(Connect("dev1"))
    assert link.server.deadline is None
    assert link.server.check_deadline() is None


# --- topic filters (§4.7) -------------------------------------------------------------------------

MATCHES = [
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("#", "a/b/c", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("#", "$SYS/x", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=1&$version=2", True),
    (C2D_FILTER, C2D_TOPIC, True),
    (C2D_FILTER, "devices/dev2/messages/devicebound/x", False),
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a/b/d", False),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCHES)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


def test_subscription_qos_takes_the_highest_match() -> None:
    session = SessionState("dev1")
    session.subscriptions.update({"a/#": QoS.AT_MOST_ONCE, "a/+": QoS.AT_LEAST_ONCE})
    assert session.subscription_qos("a/b") == QoS.AT_LEAST_ONCE
    assert session.subscription_qos("a/b/c") == QoS.AT_MOST_ONCE
    assert session.subscription_qos("b") is None


# --- Hypothesis -----------------------------------------------------------------------------------


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_arbitrary_bytes_only_produce_events(data: bytes) -> None:
    server = ServerConnection(clock=FakeClock(), max_packet_size=200)
    server.receive_data(data)
    for event in server.events():
        if isinstance(event, ConnectRequested):
            server.accept()


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_arbitrary_bytes_after_connecting_only_produce_events(data: bytes) -> None:
    link = Link()
    link.connect()
    link.server.receive_data(data)
    for event in link.server.events():
        if isinstance(event, Subscribed):
            link.server.suback(event.packet_id)
        elif isinstance(event, Unsubscribed):
            link.server.unsuback(event.packet_id)
        elif isinstance(event, Published) and event.packet_id is not None:
            link.server.puback(event.packet_id)
        elif isinstance(event, PingReceived):
            link.server.pingresp()


# --- a real peer: paho-mqtt over a socket, the server driven by a plain blocking loop ------------


def _serve_one_connection(listener: socket.socket, log: list[Event]) -> None:
    """Run one ServerConnection over a blocking socket, answering as the hub would."""
    connection, _ = listener.accept()
    server = ServerConnection()
    with connection:
        connection.settimeout(10)
        while server.state is not ConnectionState.CLOSED:
            data = connection.recv(65536)
            if not data:
                server.close()
                break
            server.receive_data(data)
            for event in server.events():
                log.append(event)
                if isinstance(event, ConnectRequested):
                    connection.sendall(server.accept())
                elif isinstance(event, Subscribed):
                    connection.sendall(server.suback(event.packet_id))
                    connection.sendall(server.send_publish(C2D_TOPIC, b"to the device"))
                elif isinstance(event, Published) and event.packet_id is not None:
                    connection.sendall(server.puback(event.packet_id))
                elif isinstance(event, PingReceived):
                    connection.sendall(server.pingresp())


def test_paho_client_against_the_core() -> None:
    log: list[Event] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        thread = threading.Thread(target=_serve_one_connection, args=(listener, log))
        thread.start()
        received: list[tuple[str, bytes, int]] = []
        got_message = threading.Event()

        def on_message(_client: object, _userdata: object, message: object) -> None:
            received.append((message.topic, message.payload, message.qos))  # type: ignore[attr-defined]
            got_message.set()

        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id="dev1",
            clean_session=False,
            protocol=paho.MQTTv311,
        )
        client.username_pw_set("localhost/dev1/?api-version=2019-10-01")
        client.on_message = on_message
        client.connect("127.0.0.1", listener.getsockname()[1], keepalive=60)
        client.loop_start()
        try:
            client.subscribe(C2D_FILTER, qos=1)
            info = client.publish("devices/dev1/messages/events/a=1", b"{}", qos=1)
            info.wait_for_publish(timeout=10)
            assert info.is_published()
            assert got_message.wait(timeout=10)
        finally:
            client.disconnect()
            client.loop_stop()
            thread.join(timeout=10)
    assert received == [(C2D_TOPIC, b"to the device", 1)]
    kinds = [type(event) for event in log]
    assert kinds[0] is ConnectRequested
    assert {Subscribed, Published, PubAckReceived} <= set(kinds)
    assert kinds[-1] is Disconnected
    connect = log[0]
    assert isinstance(connect, ConnectRequested)
    assert (connect.client_id, connect.clean_session, connect.keepalive) == ("dev1", False, 60)


@pytest.mark.parametrize(
    ("first_byte", "code"),
    [
        (b"\x30", ProtocolErrorCode.UNEXPECTED_PACKET),  # PUBLISH
        (b"\xc0", ProtocolErrorCode.UNEXPECTED_PACKET),  # PINGREQ
        (b"\x82", ProtocolErrorCode.UNEXPECTED_PACKET),  # SUBSCRIBE
        (b"\x00", ProtocolErrorCode.MALFORMED),  # reserved type 0
    ],
    ids=["publish", "pingreq", "subscribe", "reserved"],
)
def test_a_first_packet_that_is_not_connect_is_refused_on_its_first_byte(
    first_byte: bytes, code: ProtocolErrorCode
) -> None:
    link = Link()
    link.server.receive_data(first_byte)  # the rest of the packet may never come
    [event] = list(link.server.events())
    assert isinstance(event, ProtocolViolation)
    assert event.code == code
    assert link.server.state is ConnectionState.CLOSED


def test_the_first_byte_of_a_connect_waits_for_the_rest() -> None:
    link = Link()
    link.server.receive_data(b"\x10")
    assert list(link.server.events()) == []
    assert link.server.state is ConnectionState.AWAITING_CONNECT
