"""One AMQP 1.0 connection, sans-I/O, on Apache Qpid Proton's engine.

Theory of operation: Proton's engine (``proton.Transport`` bound to a
``proton.Connection``) is a state machine with no I/O of its own: bytes read from the
socket are pushed into the transport, the bytes it wants to write are popped from it,
and what happened (a peer opened a link, a message arrived, credit was granted) is
collected as events. `AmqpEngine` drives it so and turns the events into calls on an
`EngineHandler`, which decides what each link is and answers messages. The asyncio
listener (`fleetpki.hub.amqp.server`) only moves bytes; the same engine serves a TLS
socket or a WebSocket.

What the engine decides by itself, as AMQP 1.0 (OASIS, 2012) says:

* SASL (§5.3): MSSBCBS and ANONYMOUS are offered (`fleetpki.hub.amqp.sasl`); who the
  peer is comes later, from the tokens it puts to ``$cbs`` (claims-based security,
  as Azure does).
* the frame size (§2.7.1 ``max-frame-size``): a peer's frame over the limit is a
  framing error that closes the connection (Proton enforces it);
* the frames it sends carry every field (`fleetpki.hub.amqp.frames`: azure-eventhub
  needs them);
* the message size (§2.7.3 ``max-message-size``): a transfer over the limit is
  rejected with ``amqp:link:message-size-exceeded`` and never reaches the handler.
"""

from __future__ import annotations

from typing import Any, Protocol

from proton import (
    Collector,
    Condition,
    Connection,
    Delivery,
    Endpoint,
    Event,
    Link,
    Message,
    Transport,
    symbol,
)

from fleetpki.hub.amqp.frames import FramePadder
from fleetpki.hub.amqp.sasl import SaslGate

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "AmqpEngine",
    "EngineHandler",
    "reject",
]

#: The largest frame a peer may send (bytes); Azure's is 64 KiB as well.
DEFAULT_MAX_FRAME_SIZE = 65536
#: The largest message a peer may send (bytes): Azure IoT Hub's 256 KiB for a message.
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024


class EngineHandler(Protocol):
    """What the engine asks of the application, one method per kind of event."""

    def link_opened(self, link: Link) -> None:
        """A peer attached ``link``: open it (with its terminus) or close it with a condition."""

    def link_closed(self, link: Link) -> None:
        """A peer detached ``link`` (or the connection ended)."""

    def link_flow(self, link: Link) -> None:
        """A peer granted credit on our sending ``link``."""

    def message_received(self, link: Link, delivery: Delivery, message: Message) -> None:
        """A whole message arrived on our receiving ``link``; settle ``delivery`` (maybe later)."""

    def delivery_updated(self, link: Link, delivery: Delivery) -> None:
        """The peer settled or changed the state of a delivery we sent."""


def reject(delivery: Delivery, condition: str, description: str, info: Any = None) -> None:
    """Reject ``delivery`` with an AMQP error (§3.4.2 ``rejected``) and settle it."""
    delivery.local.condition = Condition(condition, description, info)
    delivery.update(Delivery.REJECTED)
    delivery.settle()


class AmqpEngine:
    """A server-side AMQP connection: bytes in, bytes out, events to ``handler``.

    Args:
        handler: decides what links are and what messages do.
        container_id: our container id in the open frame.
        max_frame_size: see :data:`DEFAULT_MAX_FRAME_SIZE`.
        max_message_size: see :data:`DEFAULT_MAX_MESSAGE_SIZE`.
        idle_timeout: seconds of silence after which the peer is gone (0: never).
    """

    def __init__(
        self,
        handler: EngineHandler,
        *,
        container_id: str,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        idle_timeout: float = 240.0,
    ) -> None:
        self._handler = handler
        self.max_message_size = max_message_size
        self.connection = Connection()
        self.connection.container = container_id
        self.connection.properties = {symbol("product"): "fleetpki"}
        self._collector = Collector()
        self.connection.collect(self._collector)
        self.transport = Transport(Transport.SERVER)
        self.transport.max_frame_size = max_frame_size
        self.transport.idle_timeout = idle_timeout
        self.transport.bind(self.connection)
        self._sasl = SaslGate()
        self._sasl_reply = b""
        self._sasl_failed = False
        self._dispatching = False
        self._padder = FramePadder()

    @property
    def closed(self) -> bool:
        """Whether the transport is done both ways (close the socket once output is sent)."""
        return self._sasl_failed or bool(self.transport.closed)

    @property
    def error(self) -> str | None:
        """The transport's error condition, if it failed (``amqp:connection:framing-error``)."""
        if self._sasl_failed:
            return "amqp:unauthorized-access"
        condition = self.transport.condition
        return None if condition is None else str(condition.name)

    def receive(self, data: bytes) -> None:
        """Feed bytes read from the peer; the handler is called for what they complete."""
        if self._sasl_failed:
            return
        if not self._sasl.done or self._sasl_reply:
            step = self._sasl.receive(data)
            self._sasl_reply += step.reply
            self._sasl_failed = step.failed
            if step.rest is None:
                return
            data = step.rest
        view = memoryview(data)
        while view:
            capacity = self.transport.capacity()
            if capacity <= 0:
                break  # the tail is closed (an error): the rest is ignored
            chunk = view[:capacity]
            self.transport.push(bytes(chunk))
            view = view[len(chunk) :]
            self.dispatch()
        self.dispatch()

    def receive_eof(self) -> None:
        """The peer closed its side."""
        self.transport.close_tail()
        self.dispatch()

    def output(self) -> bytes:
        """The bytes to write to the peer now (empty when there are none)."""
        self.dispatch()
        parts = [self._sasl_reply]
        self._sasl_reply = b""
        if self._sasl_failed or not self._sasl.done:
            return b"".join(parts)
        while True:
            pending = self.transport.pending()
            if pending <= 0:
                break
            chunk = self.transport.peek(pending) or b""
            self.transport.pop(len(chunk))
            parts.append(self._padder.feed(chunk))
        return b"".join(parts)

    def tick(self, now: float) -> float:
        """Run timers (idle timeout, heartbeats) at ``now``; the next deadline, or 0."""
        deadline = float(self.transport.tick(now))
        self.dispatch()
        return deadline

    def close(self, condition: str | None = None, description: str = "") -> None:
        """Close the connection, with an error ``condition`` if given."""
        if condition is not None:
            self.connection.condition = Condition(condition, description)
        self.connection.close()
        self.dispatch()

    def dispatch(self) -> None:
        """Handle every collected event (not again from inside a handler: the loop goes on)."""
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while True:
                event = self._collector.peek()
                if event is None:
                    return
                try:
                    self._handle(event)
                finally:
                    self._collector.pop()
        finally:
            self._dispatching = False

    def _handle(self, proton_event: Event) -> None:
        # Proton types an event's endpoints as optional; each kind below has its own.
        event: Any = proton_event
        kind = event.type
        if kind == Event.CONNECTION_REMOTE_OPEN:
            if event.connection.state & Endpoint.LOCAL_UNINIT:
                event.connection.open()
        elif kind == Event.CONNECTION_REMOTE_CLOSE:
            for link in _links(event.connection):
                self._handler.link_closed(link)
            event.connection.close()
        elif kind == Event.SESSION_REMOTE_OPEN:
            if event.session.state & Endpoint.LOCAL_UNINIT:
                event.session.open()
        elif kind == Event.SESSION_REMOTE_CLOSE:
            event.session.close()
        elif kind == Event.LINK_REMOTE_OPEN:
            link = event.link
            if link.state & Endpoint.LOCAL_UNINIT:
                if link.is_receiver:
                    link.max_message_size = self.max_message_size
                self._handler.link_opened(link)
        elif kind in (Event.LINK_REMOTE_CLOSE, Event.LINK_REMOTE_DETACH):
            link = event.link
            self._handler.link_closed(link)
            if not link.state & Endpoint.LOCAL_CLOSED:
                link.close()
        elif kind == Event.LINK_FLOW:
            if event.link.is_sender:
                self._handler.link_flow(event.link)
        elif kind == Event.DELIVERY:
            self._delivery(event.link, event.delivery)
        elif kind == Event.TRANSPORT_TAIL_CLOSED:
            for link in _links(self.connection):
                self._handler.link_closed(link)

    def _delivery(self, link: Link, delivery: Delivery) -> None:
        if link.is_sender:
            self._handler.delivery_updated(link, delivery)
            return
        if delivery.aborted:
            delivery.settle()
            return
        if not delivery.readable:
            return
        if delivery.pending > self.max_message_size:
            # §2.7.3: the link's max-message-size was exceeded; the link ends with it.
            _drain(link, delivery)
            delivery.settle()
            link.condition = Condition(
                "amqp:link:message-size-exceeded",
                f"a message is at most {self.max_message_size} bytes",
            )
            link.close()
            return
        if delivery.partial:
            return
        data = link.recv(delivery.pending)
        link.advance()
        link.flow(1)  # keep the peer's credit where it was
        message = Message()
        try:
            message.decode(data or b"")
        except Exception:  # Proton raises its own error types for bad encodings
            reject(delivery, "amqp:decode-error", "the message cannot be decoded")
            return
        self._handler.message_received(link, delivery, message)


def _drain(link: Link, delivery: Delivery) -> None:
    while delivery.pending:
        if not link.recv(delivery.pending):
            break


def _links(connection: Connection) -> list[Link]:
    links: list[Link] = []
    link = connection.link_head(0)
    while link is not None:
        links.append(link)
        link = link.next(0)
    return links
