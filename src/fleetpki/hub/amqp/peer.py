"""What one AMQP client may do on the hub, and what its links do (the engine's handler).

A client first proves who it is by putting SAS tokens to ``$cbs`` (claims-based
security, as Azure IoT Hub and Event Hubs do): each put-token is checked by the hub's
one SAS check (`fleetpki.services.hub_sas.HubSasService.authenticate_claim`) and, when
it holds, becomes a claim for its audience until the token expires. A link to a
service node is opened only under a live claim that covers it; otherwise it is closed
at once with ``amqp:unauthorized-access``, as Azure does.

* ``$cbs`` and ``$management``: we receive requests and answer on the peer's
  receiving link from the same node (put-token; READ of the Event Hub or a partition);
* ``/messages/devicebound``: we receive; a message is queued for its device and
  accepted after the commit;
* ``/messages/servicebound/feedback``: we send batches of feedback records; those the
  peer accepts are done;
* ``{hub}/ConsumerGroups/$Default/Partitions/{n}``: we send stored telemetry from the
  link's start position on.

Every database call runs on the hub's thread pool; its answer comes back on the event
loop, where the Proton objects live (they are not thread-safe).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from proton import Condition, Delivery, Link, Message, symbol

from fleetpki.errors import FleetPKIError, NotFoundError, ValidationError
from fleetpki.hub.amqp.addresses import Node, NodeKind, c2d_device_id, parse_node
from fleetpki.hub.amqp.engine import reject
from fleetpki.hub.amqp.messages import (
    application_properties,
    body_bytes,
    c2d_properties,
    event_message,
    feedback_message,
    parse_position,
    source_filters,
    status_reply,
)
from fleetpki.services.context import Actor
from fleetpki.services.hub_eventhub import EventHubService, PositionKind
from fleetpki.services.hub_messages import HubMessageService
from fleetpki.services.hub_sas import ClaimGrant, HubSasService

__all__ = ["AmqpPeer", "AmqpServices"]

_log = logging.getLogger("fleetpki.hub.amqp")
_T = TypeVar("_T")

#: Credit we grant a client's sending link.
_CREDIT = 100
#: How long a partition or feedback link waits before looking again when it is caught up.
_POLL_SECONDS = 0.25
#: Events read per query for a partition link.
_READ_BATCH = 100
_MGMT = NodeKind.MANAGEMENT
_OP_READ = "READ"
_TYPE_EVENTHUB = "com.microsoft:eventhub"
_TYPE_PARTITION = "com.microsoft:partition"


@dataclass(frozen=True, slots=True)
class AmqpServices:
    """The services an AMQP client reaches (injected by ``start_hub``)."""

    sas: HubSasService
    messages: HubMessageService
    eventhub: EventHubService
    executor: concurrent.futures.Executor
    hostnames: tuple[str, ...]


@dataclass(slots=True)
class _Outgoing:
    """One of our sending links: what waits for credit, and its pump's state."""

    link: Link
    node: Node
    queue: deque[tuple[Message, Callable[[Delivery], None] | None]] = field(default_factory=deque)
    cursor: int | None = None  # partitions: the sequence number read up to
    busy: bool = False
    in_flight: dict[str, list[int]] = field(default_factory=dict)  # feedback rows per tag


class AmqpPeer:
    """The handler of one AMQP connection (see the module docstring).

    Args:
        services: the hub's services.
        loop: the event loop the connection runs on.
        flush: writes the engine's pending output to the socket (called after async work).
        name: the peer, for the log.
    """

    def __init__(
        self,
        services: AmqpServices,
        loop: asyncio.AbstractEventLoop,
        flush: Callable[[], None],
        name: str,
    ) -> None:
        self._services = services
        self._loop = loop
        self._flush = flush
        self._name = name
        self._claims: list[ClaimGrant] = []
        self._outgoing: dict[tuple[str, bool], _Outgoing] = {}
        self._closed = False

    # ------------------------------------------------------------------ engine events

    def link_opened(self, link: Link) -> None:
        """Open a link to a node we serve, or close it with the reason."""
        address = link.remote_target.address if link.is_receiver else link.remote_source.address
        node = parse_node(address)
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        # Azure names each link with a tracking id.
        link.properties = {symbol("com.microsoft:tracking-id"): str(uuid.uuid4())}
        if link.is_receiver:
            if node.kind not in (NodeKind.CBS, NodeKind.MANAGEMENT, NodeKind.DEVICEBOUND):
                self._refuse(link, "amqp:not-found", f"no node {address!r} to send to")
                return
            if node.kind is NodeKind.DEVICEBOUND and not self._claimed():
                self._refuse(link, "amqp:unauthorized-access", "put a token to $cbs first")
                return
            link.open()
            link.flow(_CREDIT)
            return
        if node.kind in (NodeKind.CBS, NodeKind.MANAGEMENT):
            link.open()
            self._outgoing[_key(link)] = _Outgoing(link, node)
            return
        if node.kind is NodeKind.FEEDBACK:
            if not self._claimed():
                self._refuse(link, "amqp:unauthorized-access", "put a token to $cbs first")
                return
            link.open()
            self._outgoing[_key(link)] = _Outgoing(link, node)
            self._pump(self._outgoing[_key(link)])
            return
        if node.kind is NodeKind.PARTITION:
            self._open_partition(link, node)
            return
        self._refuse(link, "amqp:not-found", f"no node {address!r} to receive from")

    def link_closed(self, link: Link) -> None:
        """Forget a link the peer detached."""
        self._outgoing.pop(_key(link), None)

    def link_flow(self, link: Link) -> None:
        """The peer granted credit: send what waits, and read more for a pump."""
        outgoing = self._outgoing.get(_key(link))
        if outgoing is not None:
            self._send_queued(outgoing)
            self._pump(outgoing)

    def message_received(self, link: Link, delivery: Delivery, message: Message) -> None:
        """A request to ``$cbs`` or ``$management``, or a cloud-to-device message."""
        node = parse_node(link.remote_target.address)
        if node.kind is NodeKind.CBS:
            self._put_token(delivery, message)
        elif node.kind is NodeKind.MANAGEMENT:
            self._management(delivery, message)
        elif node.kind is NodeKind.DEVICEBOUND:
            self._c2d(delivery, message)
        else:
            reject(delivery, "amqp:not-implemented", "this node takes no messages")

    def delivery_updated(self, link: Link, delivery: Delivery) -> None:
        """The peer settled a feedback batch: accepted ones are done."""
        outgoing = self._outgoing.get(_key(link))
        if outgoing is None or not delivery.remote_state:
            return
        rows = outgoing.in_flight.pop(str(delivery.tag), None)
        accepted = delivery.remote_state == Delivery.ACCEPTED
        delivery.settle()
        if rows is not None and accepted:
            self._call(self._services.messages.complete_feedback, rows)
        if not outgoing.in_flight:
            self._pump(outgoing)

    def closed(self) -> None:
        """The connection is gone: nothing more is sent."""
        self._closed = True
        self._outgoing.clear()

    # ------------------------------------------------------------------ claims ($cbs)

    def _claimed(self, path: str = "") -> bool:
        """Whether a live claim covers ``{host}/{path}`` for one of the hub's names."""
        now = time.time()
        return any(
            claim.covers(f"{host}/{path}", now)
            for claim in self._claims
            for host in self._services.hostnames
        )

    def _put_token(self, delivery: Delivery, message: Message) -> None:
        properties = application_properties(message)
        operation = str(properties.get("operation", ""))
        audience = str(properties.get("name", ""))
        token = message.body
        delivery.update(Delivery.ACCEPTED)
        delivery.settle()
        if operation != "put-token" or not isinstance(token, str) or not audience:
            self._answer(NodeKind.CBS, message, 400, "a put-token needs a name and a token")
            return

        def done(result: ClaimGrant | FleetPKIError) -> None:
            if isinstance(result, ClaimGrant):
                self._claims = [c for c in self._claims if c.audience != result.audience]
                self._claims.append(result)
                self._answer(NodeKind.CBS, message, 202, "Accepted")
                return
            _log.info("hub: AMQP %s: put-token refused: %s", self._name, result.code)
            self._answer(NodeKind.CBS, message, result.http_status, result.code)

        self._call(self._services.sas.authenticate_claim, token, audience, then=done)

    def _check_token(self, token: str, path: str) -> ClaimGrant:
        """A token's claim for ``{host}/{path}`` on any of the hub's names (thread pool)."""
        refusal: FleetPKIError | None = None
        for host in self._services.hostnames:
            try:
                return self._services.sas.authenticate_claim(token, f"sb://{host}/{path}")
            except FleetPKIError as exc:
                refusal = exc
                if exc.code != "hub.sas_wrong_audience":
                    break
        assert refusal is not None
        raise refusal

    def _answer(
        self, node: NodeKind, request: Message, code: int, description: str, body: Any = None
    ) -> None:
        """Answer a request to ``node`` on the peer's receiving link from that node.

        The link whose target is the request's ``reply-to`` if there is one, else the
        node's only one (neither SDK sets ``reply-to`` on every request).
        """
        reply = status_reply(request, code, description, body)
        candidates = [o for o in self._outgoing.values() if o.node.kind is node]
        chosen = next(
            (o for o in candidates if o.link.remote_target.address == request.reply_to),
            candidates[0] if candidates else None,
        )
        if chosen is None:
            _log.info("hub: AMQP %s: no link to answer %r on", self._name, request.reply_to)
            return
        chosen.queue.append((reply, None))
        self._send_queued(chosen)

    # ------------------------------------------------------------------ $management

    def _management(self, delivery: Delivery, message: Message) -> None:
        delivery.update(Delivery.ACCEPTED)
        delivery.settle()
        properties = application_properties(message)
        operation = str(properties.get("operation", ""))
        kind = str(properties.get("type", ""))
        entity = str(properties.get("name", ""))
        token = properties.get("security_token")
        resource = entity
        if operation != _OP_READ or kind not in (_TYPE_EVENTHUB, _TYPE_PARTITION):
            self._answer(_MGMT, message, 400, f"unsupported operation {operation!r} on {kind!r}")
            return
        eventhub = self._services.eventhub
        partition = str(properties.get("partition", ""))

        def read() -> Any:
            if isinstance(token, str) and not self._claimed(resource):
                # The request carries its own token (azure-eventhub sends one): it must
                # cover the Event Hub on one of the hub's names.
                self._check_token(token, entity)
            eventhub.check_entity(entity)
            if kind == _TYPE_EVENTHUB:
                info = eventhub.info()
                return {
                    "name": info.name,
                    "type": _TYPE_EVENTHUB,
                    "created_at": _ms(info.created_at.timestamp()),
                    "partition_count": len(info.partition_ids),
                    "partition_ids": list(info.partition_ids),
                }
            p = eventhub.partition_info(partition)
            return {
                "name": p.name,
                "type": _TYPE_PARTITION,
                "partition": p.partition_id,
                "begin_sequence_number": p.begin_sequence_number,
                "last_enqueued_sequence_number": p.last_enqueued_sequence_number,
                "last_enqueued_offset": p.last_enqueued_offset,
                "last_enqueued_time_utc": _ms(p.last_enqueued_time.timestamp()),
                "is_partition_empty": p.is_empty,
            }

        def done(result: Any) -> None:
            if isinstance(result, FleetPKIError):
                self._answer(_MGMT, message, result.http_status, result.code)
            else:
                self._answer(_MGMT, message, 200, "OK", result)

        if not isinstance(token, str) and not self._claimed(resource):
            self._answer(_MGMT, message, 401, "put a token to $cbs first")
            return
        self._call(read, then=done)

    # ------------------------------------------------------------------ cloud-to-device

    def _c2d(self, delivery: Delivery, message: Message) -> None:
        if not self._claimed():
            reject(delivery, "amqp:unauthorized-access", "the claim for this hub has expired")
            return
        device_id = c2d_device_id(message.address)
        if device_id is None:
            reject(
                delivery,
                "amqp:invalid-field",
                "'to' must be /devices/{deviceId}/messages/devicebound",
            )
            return
        message_id = None if message.id is None else str(message.id)
        body = body_bytes(message)
        properties = c2d_properties(message)
        actor = Actor(principal_id="sas:amqp", source=f"amqp {self._name}")

        def send() -> object:
            return self._services.messages.send_c2d(
                actor, device_id, body, properties=properties, message_id=message_id
            )

        def done(result: object) -> None:
            if isinstance(result, NotFoundError):
                # Azure's answer for an unknown device (its REST form is 404 DeviceNotFound).
                reject(
                    delivery,
                    "amqp:not-found",
                    f"ErrorCode:DeviceNotFound;{device_id}",
                    {"com.microsoft:tracking-id": str(uuid.uuid4()), "status-code": 404},
                )
            elif isinstance(result, ValidationError):
                condition = (
                    "amqp:link:message-size-exceeded"
                    if result.code == "hub.message_too_large"
                    else "amqp:invalid-field"
                )
                reject(delivery, condition, result.message)
            elif isinstance(result, FleetPKIError):
                reject(delivery, "amqp:internal-error", result.code)
            else:
                delivery.update(Delivery.ACCEPTED)
                delivery.settle()

        self._call(send, then=done)

    # ------------------------------------------------------------------ partitions

    def _open_partition(self, link: Link, node: Node) -> None:
        if not self._claimed(node.path):
            self._refuse(link, "amqp:unauthorized-access", "put a token to $cbs first")
            return
        try:
            position = parse_position(source_filters(link.remote_source.filter))
        except ValueError as exc:
            self._refuse(link, "amqp:invalid-field", str(exc))
            return
        kind, value, inclusive = position or (PositionKind.OFFSET, "@latest", False)
        eventhub = self._services.eventhub

        def start() -> int:
            eventhub.check_entity(node.entity, node.consumer_group)
            eventhub.partition_number(node.partition)
            return eventhub.start_after(kind, value, inclusive=inclusive)

        def done(result: int | FleetPKIError) -> None:
            if isinstance(result, NotFoundError):
                self._refuse(link, "amqp:not-found", result.message)
            elif isinstance(result, FleetPKIError):
                self._refuse(link, "amqp:invalid-field", result.message)
            else:
                link.open()
                outgoing = _Outgoing(link, node, cursor=result)
                self._outgoing[_key(link)] = outgoing
                self._pump(outgoing)

        self._call(start, then=done)

    # ------------------------------------------------------------------ sending

    def _pump(self, outgoing: _Outgoing) -> None:
        """Read more for a partition or feedback link that has credit and nothing queued."""
        if self._closed or outgoing.busy or outgoing.queue or outgoing.link.credit <= 0:
            return
        if outgoing.node.kind is NodeKind.PARTITION:
            self._pump_partition(outgoing)
        elif outgoing.node.kind is NodeKind.FEEDBACK and not outgoing.in_flight:
            self._pump_feedback(outgoing)

    def _pump_partition(self, outgoing: _Outgoing) -> None:
        assert outgoing.cursor is not None
        outgoing.busy = True
        limit = min(_READ_BATCH, outgoing.link.credit)

        def done(result: Any) -> None:
            outgoing.busy = False
            if isinstance(result, FleetPKIError) or _key(outgoing.link) not in self._outgoing:
                return
            events, outgoing.cursor = result
            for event in events:
                outgoing.queue.append((event_message(event), None))
            self._send_queued(outgoing)
            if events:
                self._pump(outgoing)
            else:
                self._loop.call_later(_POLL_SECONDS, self._pump, outgoing)

        self._call(
            self._services.eventhub.read, outgoing.node.partition, outgoing.cursor, limit, then=done
        )

    def _pump_feedback(self, outgoing: _Outgoing) -> None:
        outgoing.busy = True

        def done(result: Any) -> None:
            outgoing.busy = False
            if isinstance(result, FleetPKIError) or _key(outgoing.link) not in self._outgoing:
                return
            if not result:
                self._loop.call_later(_POLL_SECONDS, self._pump, outgoing)
                return
            rows = [record.row_id for record in result]

            def remember(delivery: Delivery) -> None:
                outgoing.in_flight[str(delivery.tag)] = rows

            outgoing.queue.append((feedback_message(result), remember))
            self._send_queued(outgoing)

        self._call(self._services.messages.due_feedback, then=done)

    def _send_queued(self, outgoing: _Outgoing) -> None:
        link = outgoing.link
        settle_at_once = outgoing.node.kind is not NodeKind.FEEDBACK
        while outgoing.queue and link.credit > 0:
            message, sent = outgoing.queue.popleft()
            delivery = link.delivery(uuid.uuid4().hex)  # Proton takes tags as text
            link.send(message.encode())
            link.advance()
            if sent is not None:
                sent(delivery)
            if settle_at_once:
                delivery.settle()
        self._flush()

    # ------------------------------------------------------------------ helpers

    def _refuse(self, link: Link, condition: str, description: str) -> None:
        _log.info("hub: AMQP %s: link refused: %s (%s)", self._name, condition, description)
        link.open()
        link.condition = Condition(condition, description)
        link.close()
        self._flush()

    def _call(
        self,
        function: Callable[..., _T],
        *args: Any,
        then: Callable[[Any], None] | None = None,
    ) -> None:
        """Run ``function`` on the thread pool; ``then`` gets its result or its error."""
        future = self._loop.run_in_executor(self._services.executor, function, *args)

        def finished(done: asyncio.Future[_T]) -> None:
            if self._closed:
                return
            try:
                result: Any = done.result()
            except FleetPKIError as exc:
                result = exc
            except Exception:
                _log.exception("hub: AMQP %s: a service call failed", self._name)
                result = FleetPKIError("hub.internal_error", "the hub could not do that")
            if then is not None:
                then(result)
            self._flush()

        future.add_done_callback(finished)


def _key(link: Link) -> tuple[str, bool]:
    """A link's key among the connection's links (AMQP 1.0 §2.6.1: a name per direction).

    Proton hands out a new wrapper object per event, so the object is no key.
    """
    return (str(link.name), bool(link.is_sender))


def _ms(epoch: float) -> Any:
    from proton import timestamp

    return timestamp(int(epoch * 1000))
