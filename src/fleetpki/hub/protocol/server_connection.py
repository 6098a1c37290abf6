"""The broker side of one MQTT 3.1.1 connection as a sans-I/O state machine.

Theory of operation
-------------------
A `ServerConnection` stands for one network connection, seen from the broker. It does
no I/O and keeps no timers. The asyncio layer moves bytes and time in and out:

* bytes received go into `ServerConnection.receive_data`; events come out of
  `ServerConnection.next_event` (or the `ServerConnection.events` iterator) until it
  returns ``None``, meaning "need more bytes";
* every answer the application chooses (`accept`, `refuse`, `puback`, `suback`,
  `send_publish`, ...) returns the bytes to write, in the order they must be written;
* time is read from an injected monotonic clock; the listener sleeps until
  `ServerConnection.deadline` and then calls `ServerConnection.check_deadline`.

The connection moves through four states, and *only* along the rows of `_TRANSITIONS`:

    ================  ========================================  ================
    state             trigger                                   next state
    ================  ========================================  ================
    AWAITING_CONNECT  CONNECT received                          CONNECT_RECEIVED
    AWAITING_CONNECT  violation, connect timeout, close()       CLOSED
    CONNECT_RECEIVED  accept()                                  CONNECTED
    CONNECT_RECEIVED  refuse(), violation, close()              CLOSED
    CONNECTED         DISCONNECT, violation, keepalive timeout  CLOSED
    CONNECTED         close()                                   CLOSED
    CLOSED            close() (harmless again)                  CLOSED
    ================  ========================================  ================

While in CONNECT_RECEIVED the application authenticates the client; input is held back
unparsed, because a server must not process anything sent after CONNECT until it has
accepted it (MQTT 3.1.1 §3.1.4-5). Which packets a client may send in each state is
the second table, `_CLIENT_PACKETS`; anything else is a protocol violation, after which
the connection is CLOSED and the listener must drop the transport, first writing the
violation's ``reply`` (a CONNACK refusal, for a few CONNECT errors).

A `SessionState` (in `fleetpki.hub.protocol.session`) is what outlives a connection when
CleanSession is 0 (§3.1.2.4): the client's subscriptions and the QoS 1 messages sent to
it but not yet acknowledged, with their packet identifiers. Attaching it to the next
connection re-sends those messages with DUP set and their original identifiers (§4.4),
which matters because the Azure SDK never re-subscribes after reconnecting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from enum import Enum, auto

from fleetpki.hub.protocol.encoder import encode, encode_puback, encode_pubacks, encode_publish
from fleetpki.hub.protocol.events import (
    ConnectRequested,
    Disconnected,
    Event,
    PingReceived,
    ProtocolViolation,
    PubAckReceived,
    Published,
    Subscribed,
    TimedOut,
    Unsubscribed,
)
from fleetpki.hub.protocol.packets import (
    DEFAULT_MAX_PACKET_SIZE,
    ConnAck,
    Connect,
    ConnectReturnCode,
    Disconnect,
    Packet,
    PingReq,
    ProtocolError,
    ProtocolErrorCode,
    PubAck,
    Publish,
    QoS,
    SubAck,
    SubAckReturnCode,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from fleetpki.hub.protocol.reader import PacketReader
from fleetpki.hub.protocol.session import ConnectionStateError, OutgoingMessage, SessionState

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "MAX_KEEPALIVE_SECONDS",
    "ConnectionState",
    "ServerConnection",
]

#: Azure IoT Hub uses at most this keepalive, whatever the client asks for.
MAX_KEEPALIVE_SECONDS = 1767.0

#: How long a new connection may take to send its CONNECT.
DEFAULT_CONNECT_TIMEOUT = 30.0

_PINGRESP = b"\xd0\x00"
_CONNECT_TYPE = 1  # the control packet type of CONNECT (§2.2.1)
_RESERVED_TYPES = frozenset({0, 15})


class ConnectionState(Enum):
    """Where a `ServerConnection` is in its life (see the module docstring)."""

    AWAITING_CONNECT = auto()
    CONNECT_RECEIVED = auto()
    CONNECTED = auto()
    CLOSED = auto()


class _Trigger(Enum):
    """What moves the connection: a packet received, a call made, or the clock."""

    CONNECT = auto()
    ACCEPT = auto()
    REFUSE = auto()
    DISCONNECT = auto()
    VIOLATION = auto()
    TIMEOUT = auto()
    CLOSE = auto()


_S = ConnectionState
_T = _Trigger

# Every allowed transition; a missing row means the trigger is not allowed in that state.
_TRANSITIONS: dict[tuple[ConnectionState, _Trigger], ConnectionState] = {
    (_S.AWAITING_CONNECT, _T.CONNECT): _S.CONNECT_RECEIVED,
    (_S.AWAITING_CONNECT, _T.VIOLATION): _S.CLOSED,
    (_S.AWAITING_CONNECT, _T.TIMEOUT): _S.CLOSED,
    (_S.AWAITING_CONNECT, _T.CLOSE): _S.CLOSED,
    (_S.CONNECT_RECEIVED, _T.ACCEPT): _S.CONNECTED,
    (_S.CONNECT_RECEIVED, _T.REFUSE): _S.CLOSED,
    (_S.CONNECT_RECEIVED, _T.VIOLATION): _S.CLOSED,
    (_S.CONNECT_RECEIVED, _T.CLOSE): _S.CLOSED,
    (_S.CONNECTED, _T.DISCONNECT): _S.CLOSED,
    (_S.CONNECTED, _T.VIOLATION): _S.CLOSED,
    (_S.CONNECTED, _T.TIMEOUT): _S.CLOSED,
    (_S.CONNECTED, _T.CLOSE): _S.CLOSED,
    (_S.CLOSED, _T.CLOSE): _S.CLOSED,
}

# The packets a client may send in each state that reads input (§3.1.0-1, §3.1.0-2: the
# first packet is CONNECT and only the first). Server-to-client packets, QoS 2 flow
# packets and a second CONNECT are all violations.
_CLIENT_PACKETS: dict[ConnectionState, frozenset[type[Packet]]] = {
    _S.AWAITING_CONNECT: frozenset({Connect}),
    _S.CONNECTED: frozenset({Publish, PubAck, Subscribe, Unsubscribe, PingReq, Disconnect}),
}

# Filling the one slot of a frozen Published directly, as reader.py does for Publish.
_SET_PUBLISHED_PACKET = Published.__dict__["packet"].__set__

# Enum attribute lookups are slow on CPython 3.11; the per-message paths use these.
_AWAITING_CONNECT = ConnectionState.AWAITING_CONNECT
_CONNECTED = ConnectionState.CONNECTED


class ServerConnection:
    """One client connection, broker side: bytes in, events out, bytes back.

    Args:
        clock: a monotonic clock in seconds; injected so tests can move time.
        max_packet_size: the largest packet accepted from the client.
        connect_timeout: seconds a new connection may take to send CONNECT.
        max_keepalive: the longest keepalive honoured; a client asking for more, or for
            0 (no keepalive), gets this one (Azure IoT Hub's rule). ``None`` follows the
            spec alone, where 0 disables the check (§3.1.2.10).
    """

    __slots__ = (
        "_clock",
        "_connect",
        "_connect_timeout",
        "_keepalive",
        "_last_packet_at",
        "_max_keepalive",
        "_opened_at",
        "_pending_subscribes",
        "_pending_unsubscribes",
        "_reader",
        "_session",
        "_state",
    )

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_keepalive: float | None = MAX_KEEPALIVE_SECONDS,
    ) -> None:
        self._clock = clock
        self._reader = PacketReader(max_packet_size)
        self._state = ConnectionState.AWAITING_CONNECT
        self._connect_timeout = connect_timeout
        self._max_keepalive = max_keepalive
        self._opened_at = self._last_packet_at = clock()
        self._keepalive = 0.0
        self._connect: Connect | None = None
        self._session: SessionState | None = None
        self._pending_subscribes: dict[int, tuple[Subscription, ...]] = {}
        self._pending_unsubscribes: dict[int, tuple[str, ...]] = {}

    # -- inspection --

    @property
    def state(self) -> ConnectionState:
        """The current state."""
        return self._state

    @property
    def connect_packet(self) -> Connect | None:
        """The CONNECT received, once there is one."""
        return self._connect

    @property
    def session(self) -> SessionState | None:
        """The session attached by `accept`; keep it after close if CleanSession was 0."""
        return self._session

    @property
    def keepalive(self) -> float:
        """The keepalive in force once accepted, in seconds (0: none)."""
        return self._keepalive

    @property
    def deadline(self) -> float | None:
        """The clock value at which `check_deadline` will time the connection out.

        Before CONNECT: opening time plus the connect timeout. Connected: the last packet's
        time plus 1.5 x keepalive (§3.1.2.10). Otherwise (or keepalive 0): ``None``.
        """
        state = self._state
        if state is ConnectionState.CONNECTED:
            if not self._keepalive:
                return None
            return self._last_packet_at + 1.5 * self._keepalive
        if state is ConnectionState.AWAITING_CONNECT:
            return self._opened_at + self._connect_timeout
        return None

    # -- input --

    def receive_data(self, data: bytes) -> None:
        """Take bytes received from the client; then read events with `next_event`."""
        if self._state is not ConnectionState.CLOSED:
            self._reader.feed(data)

    def next_event(self) -> Event | None:
        """Return the next event, or ``None`` when more bytes (or an answer) are needed.

        After a terminal event (`Disconnected`, `ProtocolViolation`) it returns ``None``
        for ever. In CONNECT_RECEIVED it returns ``None`` until `accept` is called.
        """
        while (state := self._state) is _CONNECTED or state is _AWAITING_CONNECT:
            if state is _AWAITING_CONNECT and (
                (kind := self._reader.peek_type()) is not None and kind != _CONNECT_TYPE
            ):
                # §3.1.0-1: refused on its first byte, so a client that sends another
                # packet's header (and never its body) is not held for the connect timeout.
                if kind in _RESERVED_TYPES:
                    return self._violation(
                        ProtocolErrorCode.MALFORMED, f"packet type {kind} is reserved (§2.2.1)"
                    )
                return self._violation(
                    ProtocolErrorCode.UNEXPECTED_PACKET,
                    "the first packet must be CONNECT (§3.1.0-1)",
                )
            try:
                packet = self._reader.next_packet()
            except ProtocolError as exc:
                return self._violation(exc.code, exc.reason)
            if packet is None:
                return None
            self._last_packet_at = self._clock()
            if type(packet) is Publish and state is _CONNECTED:  # the hot path first
                if packet.qos == 2:
                    # Azure IoT Hub closes the connection on QoS 2 (it grants at most QoS 1).
                    return self._violation(
                        ProtocolErrorCode.QOS_NOT_SUPPORTED, "QoS 2 PUBLISH is not supported"
                    )
                published = object.__new__(Published)  # Published(packet) without __init__
                _SET_PUBLISHED_PACKET(published, packet)
                return published
            if type(packet) not in _CLIENT_PACKETS[state]:
                return self._violation(
                    ProtocolErrorCode.UNEXPECTED_PACKET,
                    f"a client may not send {type(packet).__name__} now (§3.1.0)",
                )
            if (event := self._dispatch(packet)) is not None:
                return event
        if (
            state is ConnectionState.CONNECT_RECEIVED
            and self._reader.buffered > self._reader.max_packet_size
        ):
            # Held-back input is bounded, so a client cannot flood us while we authenticate.
            return self._violation(
                ProtocolErrorCode.PACKET_TOO_LARGE, "too much data sent before CONNACK"
            )
        return None

    def events(self) -> Iterator[Event]:
        """Yield events until `next_event` returns ``None``.

        The iterator is lazy, so calling `accept` while handling `ConnectRequested`
        lets the following packets through in the same loop.
        """
        while (event := self.next_event()) is not None:
            yield event

    def check_deadline(self) -> TimedOut | None:
        """Close the connection if its `deadline` has passed, and say so.

        Call it when a timer set for `deadline` fires; ``None`` means not yet (activity
        moved the deadline), so set the timer again.
        """
        deadline = self.deadline
        if deadline is None or self._clock() < deadline:
            return None
        code = (
            ProtocolErrorCode.CONNECT_TIMEOUT
            if self._state is ConnectionState.AWAITING_CONNECT
            else ProtocolErrorCode.KEEPALIVE_TIMEOUT
        )
        will = self._will_on_failure()
        self._move(_Trigger.TIMEOUT)
        return TimedOut(code, will)

    # -- answers to the client --

    def accept(self, session: SessionState | None = None) -> bytes:
        """Accept the CONNECT: CONNACK 0, then any messages the session still owes.

        Args:
            session: the state stored for this client id, or ``None`` if there is none.
                With CleanSession=1 it is cleared and "session present" is 0; with
                CleanSession=0 an existing session sets "session present" (§3.2.2.2)
                and its unacknowledged messages are re-sent with DUP=1 (§4.4).

        Raises:
            ConnectionStateError: no CONNECT is waiting for an answer, or the session
                belongs to another client id.
        """
        connect = self._require_connect()
        if session is not None and session.client_id != connect.client_id:
            raise ConnectionStateError("the session belongs to another client id")
        self._move(_Trigger.ACCEPT)
        present = session is not None and not connect.clean_session
        if session is None:
            session = SessionState(connect.client_id)
        elif connect.clean_session:
            session.clear()
        self._session = session
        keepalive = float(connect.keepalive)
        limit = self._max_keepalive
        if limit is not None and (keepalive == 0 or keepalive > limit):
            keepalive = limit
        self._keepalive = keepalive
        self._last_packet_at = self._clock()
        connack = encode(ConnAck(present, ConnectReturnCode.ACCEPTED))
        return connack + session._redeliver()

    def refuse(self, return_code: ConnectReturnCode) -> bytes:
        """Refuse the CONNECT with a non-zero return code (§3.2.2.3); then close.

        Azure's SDK stops retrying on 4 and 5 and retries for ever on 3, so unknown,
        disabled and revoked devices should get ``NOT_AUTHORIZED``.

        Raises:
            ConnectionStateError: no CONNECT is waiting, or ``return_code`` is ACCEPTED.
        """
        self._require_connect()
        if return_code == ConnectReturnCode.ACCEPTED:
            raise ConnectionStateError("refuse() needs a non-zero return code")
        self._move(_Trigger.REFUSE)
        return encode(ConnAck(False, return_code))

    def send_publish(
        self,
        topic: str,
        payload: bytes,
        qos: QoS = QoS.AT_LEAST_ONCE,
        *,
        retain: bool = False,
        tag: str | None = None,
    ) -> bytes:
        """Publish to the client. QoS 1 takes a packet id and waits in the session.

        Args:
            tag: kept with an in-flight QoS 1 message and returned in `PubAckReceived`.

        Raises:
            ConnectionStateError: not connected, QoS 2 asked, or the in-flight table full.
            ProtocolError: ``topic`` is not a valid topic name.
        """
        session = self._require_connected()
        if qos == QoS.AT_MOST_ONCE:
            return encode_publish(topic, payload, 0, retain, False, None)
        if qos != QoS.AT_LEAST_ONCE:
            raise ConnectionStateError("the hub sends at most QoS 1, like Azure IoT Hub")
        packet_id = session._next_free_id()
        data = encode_publish(topic, payload, 1, retain, False, packet_id)  # checks the topic
        message = OutgoingMessage(packet_id, topic, payload, QoS.AT_LEAST_ONCE, retain, tag)
        session._inflight[packet_id] = message
        return data

    def puback(self, packet_id: int) -> bytes:
        """Acknowledge a QoS 1 `Published` (after storing it, for at-least-once).

        PUBACKs should go out in the order the PUBLISH packets came in (§4.6).
        """
        if self._state is not _CONNECTED:
            raise ConnectionStateError(f"the connection is {self._state.name.lower()}")
        return encode_puback(packet_id)

    def pubacks(self, packet_ids: Sequence[int]) -> bytes:
        """`puback` for several QoS 1 `Published` at once, in the order given (§4.6)."""
        if self._state is not _CONNECTED:
            raise ConnectionStateError(f"the connection is {self._state.name.lower()}")
        return encode_pubacks(packet_ids)

    def suback(
        self, packet_id: int, return_codes: Sequence[SubAckReturnCode] | None = None
    ) -> bytes:
        """Answer a `Subscribed` and record the granted subscriptions in the session.

        Args:
            return_codes: one per requested filter, in order; ``FAILURE`` refuses one.
                By default each is granted at the requested QoS capped at 1, as Azure
                IoT Hub does. A filter already present is replaced (§3.8.4).

        Raises:
            ConnectionStateError: no SUBSCRIBE with this id awaits an answer, or the
                number of codes differs from the number of filters (§3.9.3).
        """
        session = self._require_connected()
        subscriptions = self._pending_subscribes.pop(packet_id, None)
        if subscriptions is None:
            raise ConnectionStateError(f"no SUBSCRIBE {packet_id} awaits an answer")
        if return_codes is None:
            return_codes = [
                SubAckReturnCode(min(subscription.qos, QoS.AT_LEAST_ONCE))
                for subscription in subscriptions
            ]
        elif len(return_codes) != len(subscriptions):
            self._pending_subscribes[packet_id] = subscriptions
            raise ConnectionStateError("SUBACK needs one return code per filter (§3.9.3)")
        for subscription, code in zip(subscriptions, return_codes, strict=True):
            if code != SubAckReturnCode.FAILURE:
                session.subscriptions[subscription.topic_filter] = QoS(code)
        return encode(SubAck(packet_id, tuple(return_codes)))

    def unsuback(self, packet_id: int) -> bytes:
        """Answer an `Unsubscribed`, dropping its filters from the session (§3.10.4).

        Raises:
            ConnectionStateError: no UNSUBSCRIBE with this id awaits an answer.
        """
        session = self._require_connected()
        topic_filters = self._pending_unsubscribes.pop(packet_id, None)
        if topic_filters is None:
            raise ConnectionStateError(f"no UNSUBSCRIBE {packet_id} awaits an answer")
        for topic_filter in topic_filters:
            session.subscriptions.pop(topic_filter, None)
        return encode(UnsubAck(packet_id))

    def pingresp(self) -> bytes:
        """Answer a `PingReceived` (§3.12.4)."""
        self._require_connected()
        return _PINGRESP

    def close(self) -> Will | None:
        """Mark the connection closed (transport lost, device revoked, taken over).

        Returns:
            The Will to publish, if the client was connected and did not say goodbye
            with DISCONNECT (§3.1.2.5); otherwise ``None``. Calling it again is harmless.
        """
        will = self._will_on_failure()
        self._move(_Trigger.CLOSE)
        return will

    # -- internals --

    def _move(self, trigger: _Trigger) -> None:
        new_state = _TRANSITIONS.get((self._state, trigger))
        if new_state is None:
            raise ConnectionStateError(
                f"cannot {trigger.name.lower()} in state {self._state.name.lower()}"
            )
        self._state = new_state

    def _require_connect(self) -> Connect:
        if self._state is not ConnectionState.CONNECT_RECEIVED or self._connect is None:
            raise ConnectionStateError("no CONNECT awaits an answer")
        return self._connect

    def _require_connected(self) -> SessionState:
        if self._state is not ConnectionState.CONNECTED or self._session is None:
            raise ConnectionStateError(f"the connection is {self._state.name.lower()}")
        return self._session

    def _will_on_failure(self) -> Will | None:
        if self._state is ConnectionState.CONNECTED and self._connect is not None:
            return self._connect.will
        return None

    def _violation(self, code: ProtocolErrorCode, reason: str, reply: bytes = b"") -> Event:
        if code == ProtocolErrorCode.UNSUPPORTED_PROTOCOL_LEVEL:
            # §3.1.2-2: answer CONNACK 1, then disconnect.
            reply = encode(ConnAck(False, ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION))
        will = self._will_on_failure()
        self._move(_Trigger.VIOLATION)
        return ProtocolViolation(code, reason, reply, will)

    def _dispatch(self, packet: Packet) -> Event | None:
        if isinstance(packet, PubAck):
            session = self._session
            message = session._inflight.pop(packet.packet_id, None) if session else None
            if message is None:
                # An acknowledgement for an id not in flight: a duplicate, or one for a
                # message the session has since dropped. Harmless; nothing to report.
                return None
            return PubAckReceived(message)
        if isinstance(packet, Subscribe):
            self._pending_subscribes[packet.packet_id] = packet.subscriptions
            return Subscribed(packet.packet_id, packet.subscriptions)
        if isinstance(packet, Unsubscribe):
            self._pending_unsubscribes[packet.packet_id] = packet.topic_filters
            return Unsubscribed(packet.packet_id, packet.topic_filters)
        if isinstance(packet, PingReq):
            return PingReceived()
        if isinstance(packet, Disconnect):
            self._move(_Trigger.DISCONNECT)
            return Disconnected()
        assert isinstance(packet, Connect)  # the only packet left in _CLIENT_PACKETS
        return self._on_connect(packet)

    def _on_connect(self, packet: Connect) -> Event:
        if not packet.client_id and not packet.clean_session:
            # §3.1.3-8: a zero-length id needs CleanSession=1; answer CONNACK 2 and close.
            return self._violation(
                ProtocolErrorCode.IDENTIFIER_REJECTED,
                "an empty client id needs CleanSession=1 (§3.1.3-8)",
                encode(ConnAck(False, ConnectReturnCode.IDENTIFIER_REJECTED)),
            )
        self._connect = packet
        self._move(_Trigger.CONNECT)
        return ConnectRequested(
            packet.client_id,
            packet.username,
            packet.password,
            packet.clean_session,
            packet.keepalive,
            packet.will,
        )
