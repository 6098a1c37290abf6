"""The MQTT session (§3.1.2.4): what the server keeps for a client id between its connections."""

from __future__ import annotations

from dataclasses import dataclass

from fleetpki.errors import ConflictError
from fleetpki.hub.protocol.encoder import encode_publish
from fleetpki.hub.protocol.packets import QoS
from fleetpki.hub.protocol.topic_filters import topic_matches, validate_topic_name

__all__ = ["ConnectionStateError", "OutgoingMessage", "SessionState"]

_MAX_PACKET_ID = 0xFFFF


class ConnectionStateError(ConflictError):
    """The application called a method that the connection's state does not allow.

    This is a bug in the caller (answering before CONNECT, sending after close, a SUBACK
    for a SUBSCRIBE that never came) or a full in-flight table, never the peer's fault.
    """

    def __init__(self, message: str, code: str = "mqtt.bad_state") -> None:
        super().__init__(code, message)


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A QoS 1 message sent (or queued) to the client and not yet acknowledged.

    Attributes:
        tag: whatever the application attached when sending (a C2D lock token, say).
    """

    packet_id: int
    topic: str
    payload: bytes
    qos: QoS
    retain: bool = False
    tag: str | None = None


class SessionState:
    """What the server keeps for one client id between connections (§3.1.2.4).

    It holds the subscriptions (topic filter to granted QoS) and the QoS 1 messages not
    yet acknowledged, in sending order, together with the packet identifier counter.
    It is pure data: keep it in memory (or rebuild it from storage) under the client id
    while CleanSession is 0 and hand it to the next `ServerConnection.accept`.
    """

    __slots__ = ("_inflight", "_next_packet_id", "_unsent", "client_id", "subscriptions")

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        #: Topic filter to the QoS granted for it.
        self.subscriptions: dict[str, QoS] = {}
        self._inflight: dict[int, OutgoingMessage] = {}
        # Made with the first queued message: an empty set is 216 bytes, and most
        # sessions (idle devices) never queue one.
        self._unsent: set[int] | None = None
        self._next_packet_id = 1

    @property
    def inflight(self) -> tuple[OutgoingMessage, ...]:
        """The unacknowledged outgoing messages, oldest first."""
        return tuple(self._inflight.values())

    def subscription_qos(self, topic: str) -> QoS | None:
        """The highest QoS among subscriptions matching ``topic``, or ``None`` (§3.3.5)."""
        best: QoS | None = None
        for topic_filter, qos in self.subscriptions.items():
            if (best is None or qos > best) and topic_matches(topic_filter, topic):
                best = qos
        return best

    def queue(
        self, topic: str, payload: bytes, *, retain: bool = False, tag: str | None = None
    ) -> OutgoingMessage:
        """Store a QoS 1 message for delivery when the client next connects (§3.1.2.4).

        Raises:
            ProtocolError: the topic is not a valid topic name.
            ConnectionStateError: all 65535 packet identifiers are in flight.
        """
        validate_topic_name(topic)
        packet_id = self._next_free_id()
        message = OutgoingMessage(packet_id, topic, payload, QoS.AT_LEAST_ONCE, retain, tag)
        self._inflight[packet_id] = message
        if self._unsent is None:
            self._unsent = set()
        self._unsent.add(packet_id)
        return message

    def clear(self) -> None:
        """Forget subscriptions and messages, as CleanSession=1 requires (§3.1.2.4)."""
        self.subscriptions.clear()
        self._inflight.clear()
        self._unsent = None

    def _next_free_id(self) -> int:
        if len(self._inflight) >= _MAX_PACKET_ID:
            raise ConnectionStateError(
                "all packet identifiers are in flight", code="mqtt.inflight_full"
            )
        packet_id = self._next_packet_id
        while packet_id in self._inflight:
            packet_id = packet_id % _MAX_PACKET_ID + 1
        self._next_packet_id = packet_id % _MAX_PACKET_ID + 1
        return packet_id

    def _redeliver(self) -> bytes:
        # §4.4: re-send unacknowledged PUBLISH packets with their original identifiers,
        # in their original order (§4.6); DUP only for those already sent once (§3.3.1.1).
        unsent = self._unsent or ()
        chunks = [
            encode_publish(m.topic, m.payload, 1, m.retain, m.packet_id not in unsent, m.packet_id)
            for m in self._inflight.values()
        ]
        self._unsent = None
        return b"".join(chunks)
