"""The hub's broker: MQTT session events mapped onto Azure IoT Hub's device dialect.

Theory of operation
-------------------
The listener (`fleetpki.hub.server`) turns bytes into `ServerConnection` events and
hands each to a `Broker` method together with the `Link` it came from (the connection
seen from here: write bytes, close). The broker never blocks the event loop: every call
into the `HubBackend` (the database) runs in a thread pool and its answer is written
when it comes back.

* CONNECT (ref §1.3, §4.2): the username must be ``{host}/{clientId}/?...`` for one of
  the hub's names; the TLS client certificate, its chain and the client id go to
  `HubBackend.authenticate`. Every refusal is CONNACK 5 and one log line with the
  reason code, never a TLS abort (ref §1.4). An accepted client takes over the client
  id (a previous connection is closed) and gets its persistent session back (§1.8).
* Telemetry (ref §1.5, §1.6) is decoded, queued and stored by `_TelemetryBatcher` in
  batches: messages arriving within ``batch_window`` seconds (and any arriving while a
  commit runs) share one transaction, and their PUBACKs go out only after the commit,
  so a PUBACK means "stored durably" (MQTT 3.1.1 §4.3.2).
* Twin requests, reported patches and method responses are answered on the requester's
  connection whatever it subscribed to (ref §1.7); desired patches, method requests and
  cloud-to-device messages go only where the session subscribed.
* A device may publish and subscribe only on its own topics; anything else drops the
  connection with a log line.
* Backend events (revocation, disabled or deleted device) close the live session at
  once; a block that lands while that device's CONNECT is being authenticated refuses
  it too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from cryptography import x509

from fleetpki.errors import AuthenticationError, FleetPKIError, NotFoundError
from fleetpki.hub.azure.topics import (
    AzureProtocolError,
    DeviceIdentity,
    MessageProperties,
    MethodResponse,
    SystemProperties,
    Telemetry,
    TwinGetRequest,
    TwinReportedPatch,
    c2d_topic,
    desired_patch_topic,
    is_own_topic,
    method_request_topic,
    parse_device_topic,
    parse_username,
    twin_response_topic,
)
from fleetpki.hub.backend import (
    AuthenticatedDevice,
    C2DMessage,
    C2DQueued,
    CertificateRevoked,
    DesiredPatched,
    DeviceBlocked,
    HubBackend,
    HubEvent,
    TelemetryRecord,
)
from fleetpki.hub.protocol import (
    ConnectionState,
    ConnectRequested,
    ConnectReturnCode,
    PubAckReceived,
    Published,
    QoS,
    ServerConnection,
    SessionState,
    Subscribed,
    Unsubscribed,
)

__all__ = [
    "DEFAULT_BATCH_WINDOW",
    "DEFAULT_METHOD_TIMEOUT",
    "Broker",
    "DeviceNotOnline",
    "Link",
    "MethodResult",
    "MethodTimeout",
]

_log = logging.getLogger("fleetpki.hub")

#: How long the first message of a telemetry batch waits for others (seconds).
DEFAULT_BATCH_WINDOW = 0.002
#: Direct methods time out after this long by default (ref §3.4).
DEFAULT_METHOD_TIMEOUT = 30.0

_MAX_BATCH = 2000
# Per connection: stop reading after this many telemetry messages await their commit.
_HIGH_WATER = 256
_LOW_WATER = 64

_T = TypeVar("_T")

# The Azure names of the system properties a device may set (ref §1.6).
_SYSTEM_NAMES = {
    "output_name": "output-name",
    "message_id": "message-id",
    "correlation_id": "correlation-id",
    "user_id": "user-id",
    "content_type": "content-type",
    "content_encoding": "content-encoding",
    "interface_id": "interface-id",
    "expiry_time_utc": "expiry-time-utc",
}
_C2D_SYSTEM_KEYS = {
    "$.cid": "correlation_id",
    "$.uid": "user_id",
    "$.ct": "content_type",
    "$.ce": "content_encoding",
    "$.exp": "expiry_time_utc",
}


class DeviceNotOnline(NotFoundError):
    """The device is not connected, or not subscribed to direct methods (Azure 404103)."""

    def __init__(self, device_id: str) -> None:
        super().__init__("hub.device_not_online", f"device {device_id!r} is not online")
        #: Azure's error code for this refusal (ref §3.4).
        self.azure_error_code = 404103


class MethodTimeout(FleetPKIError):
    """The device did not answer a direct method in time (Azure 504101)."""

    default_status = 504

    def __init__(self, device_id: str, method_name: str) -> None:
        super().__init__(
            "hub.method_timeout", f"device {device_id!r} did not answer {method_name!r} in time"
        )
        #: Azure's error code for this failure (ref §3.4).
        self.azure_error_code = 504101


class MethodResult:
    """A device's answer to a direct method: its status and JSON payload (ref §3.4)."""

    __slots__ = ("payload", "status")

    def __init__(self, status: int, payload: Any) -> None:
        self.status = status
        self.payload = payload

    def as_json(self) -> dict[str, Any]:
        """The service API's body: ``{"status": n, "payload": ...}``."""
        return {"status": self.status, "payload": self.payload}


class Link(Protocol):
    """One client connection as the broker sees it (implemented by the listener)."""

    mqtt: ServerConnection
    device: AuthenticatedDevice | None
    identity: DeviceIdentity | None
    unacked: int

    def write(self, data: bytes) -> None:
        """Send bytes to the client (nothing happens once closed)."""

    def close(self, reason: str) -> None:
        """Close the connection now; ``reason`` is a code for the log."""

    def peer_certificates(self) -> tuple[bytes | None, list[bytes]]:
        """The client's TLS leaf and the other certificates it sent, as DER."""

    def process(self) -> None:
        """Handle input held back while the CONNECT was being authenticated."""

    def pause_reading(self) -> None:
        """Stop reading from the client (back-pressure)."""

    def resume_reading(self) -> None:
        """Read from the client again."""


class _TelemetryBatcher:
    """Group telemetry into one commit per batch; PUBACK each message after its commit."""

    def __init__(self, broker: Broker, window: float) -> None:
        self._broker = broker
        self._window = window
        self._records: list[TelemetryRecord] = []
        self._acks: list[tuple[Link, int | None]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, record: TelemetryRecord, link: Link, packet_id: int | None) -> None:
        self._records.append(record)
        self._acks.append((link, packet_id))
        link.unacked += 1
        if link.unacked == _HIGH_WATER:
            link.pause_reading()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        broker = self._broker
        try:
            if self._window > 0:
                await asyncio.sleep(self._window)
            while self._records:
                records, acks = self._records[:_MAX_BATCH], self._acks[:_MAX_BATCH]
                del self._records[:_MAX_BATCH], self._acks[:_MAX_BATCH]
                try:
                    await broker._in_thread(broker.backend.store_telemetry, records, serial=True)
                except Exception:
                    # Not stored, so never acknowledged: the devices re-send after they
                    # reconnect (ref §1.8). Close them rather than leave them waiting.
                    _log.exception("hub: storing %d telemetry messages failed", len(records))
                    for link in {link for link, _ in acks}:
                        link.close("hub.storage_failed")
                    continue
                self._acknowledge(acks)
        finally:
            self._task = None

    @staticmethod
    def _acknowledge(acks: Sequence[tuple[Link, int | None]]) -> None:
        out: dict[Link, list[bytes]] = {}
        for link, packet_id in acks:
            link.unacked -= 1
            if link.unacked == _LOW_WATER:
                link.resume_reading()
            if packet_id is not None and link.mqtt.state is ConnectionState.CONNECTED:
                out.setdefault(link, []).append(link.mqtt.puback(packet_id))
        for link, chunks in out.items():
            link.write(b"".join(chunks))

    async def drain(self) -> None:
        """Wait until every queued message has been stored."""
        while self._task is not None:
            await asyncio.shield(self._task)


class Broker:
    """The Azure IoT Hub dialect over MQTT sessions, for one hub.

    Args:
        backend: registry, trust, storage and events.
        hostnames: the names the hub answers to, checked in CONNECT usernames.
        batch_window: how long a telemetry batch collects messages (seconds).
        utcnow: the clock for authentication and enqueued times.
    """

    def __init__(
        self,
        backend: HubBackend,
        *,
        hostnames: Iterable[str] = ("localhost",),
        batch_window: float = DEFAULT_BATCH_WINDOW,
        utcnow: Callable[[], Any] | None = None,
        workers: int = 4,
    ) -> None:
        import datetime as dt

        self.backend = backend
        self.hostnames = tuple(hostnames)
        self._utcnow = utcnow or (lambda: dt.datetime.now(dt.UTC))
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "fleetpki-hub")
        # One thread for telemetry commits keeps them in order and never concurrent.
        self._store_pool = concurrent.futures.ThreadPoolExecutor(1, "fleetpki-hub-store")
        self._batcher = _TelemetryBatcher(self, batch_window)
        self._sessions: dict[str, SessionState] = {}
        self._live: dict[str, Link] = {}
        self._method_calls: dict[tuple[str, str], asyncio.Future[MethodResult]] = {}
        self._c2d_busy: dict[str, bool] = {}
        self._block_epoch = 0
        self._blocked: dict[str, int] = {}
        self._authenticating = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Called with (client id, reason code, loop time) when a block closes a session.
        self.on_block_close: Callable[[str, str, float], None] | None = None

    # -- life --

    def start(self) -> None:
        """Bind to the running loop and listen to the backend's events."""
        self._loop = asyncio.get_running_loop()
        self.backend.add_listener(self._on_backend_event)

    async def stop(self) -> None:
        """Store pending telemetry, close every connection and stop the thread pools."""
        self.backend.remove_listener(self._on_backend_event)
        await self._batcher.drain()
        for link in list(self._live.values()):
            link.close("hub.shutdown")
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._store_pool.shutdown(wait=True)

    @property
    def connected_device_count(self) -> int:
        """How many clients are connected and accepted."""
        return len(self._live)

    def is_connected(self, client_id: str) -> bool:
        """Whether ``client_id`` has a live, accepted connection."""
        return client_id in self._live

    async def _in_thread(self, function: Callable[..., _T], *args: Any, serial: bool = False) -> _T:
        loop = asyncio.get_running_loop()
        pool = self._store_pool if serial else self._pool
        return await loop.run_in_executor(pool, function, *args)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)

    # -- CONNECT (ref §1.3, §1.4, §4.2) --

    def on_connect(self, link: Link, event: ConnectRequested) -> None:
        """Authenticate a CONNECT in the background; answer CONNACK 0 or 5."""
        self._spawn(self._connect(link, event))

    def _refuse(self, link: Link, client_id: str, code: str, message: str) -> None:
        _log.warning("hub: refused client %r: %s (%s)", client_id, code, message)
        if link.mqtt.state is ConnectionState.CONNECT_RECEIVED:
            link.write(link.mqtt.refuse(ConnectReturnCode.NOT_AUTHORIZED))
        link.close(code)

    async def _connect(self, link: Link, event: ConnectRequested) -> None:
        client_id = event.client_id
        try:
            username = parse_username(event.username, client_id, hub_hostnames=self.hostnames)
        except AzureProtocolError as exc:
            self._refuse(link, client_id, exc.code, exc.message)
            return
        leaf_der, others = link.peer_certificates()
        if leaf_der is None:
            self._refuse(link, client_id, "hub.no_client_certificate", "no TLS client certificate")
            return
        epoch = self._block_epoch
        self._authenticating += 1
        try:
            device = await self._in_thread(self._authenticate, leaf_der, others, client_id)
        except AuthenticationError as exc:
            self._refuse(link, client_id, exc.code, exc.message)
            return
        except Exception:
            _log.exception("hub: authenticating %r failed", client_id)
            self._refuse(link, client_id, "hub.internal_error", "authentication failed")
            return
        finally:
            self._authenticating -= 1
        blocked = self._blocked_since(device, epoch)
        if not self._authenticating:
            self._blocked.clear()
        if blocked is not None:
            self._refuse(link, client_id, blocked, "blocked while connecting")
            return
        if link.mqtt.state is not ConnectionState.CONNECT_RECEIVED:
            return  # the client went away while we were checking
        old = self._live.get(client_id)
        if old is not None and old is not link:
            # One connection per client id: the newer one wins (ref §1.4).
            _log.info("hub: client %r connected again; closing its previous connection", client_id)
            old.close("hub.taken_over")
        link.device = device
        link.identity = username.identity
        session = self._sessions.get(client_id)
        link.write(link.mqtt.accept(session))
        session = link.mqtt.session
        assert session is not None
        if not event.clean_session:
            self._sessions[client_id] = session
        else:
            self._sessions.pop(client_id, None)
        self._live[client_id] = link
        _log.info("hub: device %r connected", client_id)
        link.process()
        self._kick_c2d(client_id)

    def _authenticate(
        self, leaf_der: bytes, others: Sequence[bytes], client_id: str
    ) -> AuthenticatedDevice:
        try:
            leaf = x509.load_der_x509_certificate(leaf_der)
            chain = [x509.load_der_x509_certificate(der) for der in others]
        except ValueError as exc:
            raise AuthenticationError("hub.bad_certificate", "unreadable certificate") from exc
        return self.backend.authenticate(leaf, chain, client_id, self._utcnow())

    def _blocked_since(self, device: AuthenticatedDevice, epoch: int) -> str | None:
        for key, reason in (
            (f"sha1:{device.certificate_sha1}", "hub.certificate_revoked"),
            (f"serial:{device.certificate_serial}", "hub.certificate_revoked"),
            (f"device:{device.device_id}", "hub.device_disabled"),
        ):
            if self._blocked.get(key, -1) >= epoch:
                return reason
        return None

    def connection_lost(self, link: Link) -> None:
        """Forget a closed connection; keep its session if CleanSession was 0."""
        connect = link.mqtt.connect_packet
        if connect is None or link.device is None:
            return
        client_id = connect.client_id
        if self._live.get(client_id) is link:
            del self._live[client_id]
            _log.info("hub: device %r disconnected", client_id)
            if connect.clean_session:
                self._sessions.pop(client_id, None)

    # -- PUBLISH from the device (ref §1.5) --

    def on_publish(self, link: Link, event: Published) -> None:
        """Route a device's PUBLISH: telemetry, a twin request or a method response."""
        identity = link.identity
        assert identity is not None
        packet = event.packet
        try:
            message = parse_device_topic(packet.topic, identity)
        except AzureProtocolError as exc:
            _log.warning(
                "hub: dropped %r: %s on topic %r (%s)",
                identity.client_id,
                exc.code,
                packet.topic,
                exc.message,
            )
            link.close(exc.code)
            return
        if type(message) is Telemetry:
            system = message.properties.system
            application = dict(message.properties.application)
            if packet.retain:
                # Azure turns a retained publish into this application property (ref §1.8).
                application["mqtt-retain"] = "true"
            record = TelemetryRecord(
                identity.device_id,
                identity.module_id,
                self._utcnow(),
                packet.payload,
                {
                    name: value
                    for attribute, name in _SYSTEM_NAMES.items()
                    if (value := getattr(system, attribute)) is not None
                },
                application,
            )
            self._batcher.add(record, link, packet.packet_id)
            return
        # Requests are answered on their own topics, so acknowledge them at once.
        if packet.packet_id is not None:
            link.write(link.mqtt.puback(packet.packet_id))
        if isinstance(message, MethodResponse):
            self._method_answered(identity, message, packet.payload)
        elif isinstance(message, TwinGetRequest):
            self._spawn(self._twin_get(identity, message.rid))
        elif isinstance(message, TwinReportedPatch):
            self._spawn(self._twin_patch(identity, message.rid, packet.payload))

    def _send(self, client_id: str, topic: str, payload: bytes, qos: QoS) -> bool:
        """Publish to a client; QoS 1 goes into its session if it is offline."""
        link = self._live.get(client_id)
        if link is not None and link.mqtt.state is ConnectionState.CONNECTED:
            link.write(link.mqtt.send_publish(topic, payload, qos))
            return True
        session = self._sessions.get(client_id)
        if qos == QoS.AT_LEAST_ONCE and session is not None:
            session.queue(topic, payload)
            return True
        return False

    async def _twin_get(self, identity: DeviceIdentity, rid: str) -> None:
        try:
            twin = await self._in_thread(self.backend.get_twin, identity.device_id)
        except FleetPKIError as exc:
            _log.warning("hub: twin GET for %r failed: %s", identity.client_id, exc.code)
            self._send(identity.client_id, twin_response_topic(exc.http_status, rid), b"", QoS(1))
            return
        body = json.dumps(twin.document(), separators=(",", ":")).encode()
        # Delivered whatever the client subscribed to (ref §1.7).
        self._send(identity.client_id, twin_response_topic(200, rid), body, QoS.AT_LEAST_ONCE)

    async def _twin_patch(self, identity: DeviceIdentity, rid: str, payload: bytes) -> None:
        try:
            patch = json.loads(payload)
        except ValueError:
            patch = None
        if not isinstance(patch, dict):
            self._send(identity.client_id, twin_response_topic(400, rid), b"", QoS(1))
            return
        try:
            version = await self._in_thread(self.backend.patch_reported, identity.device_id, patch)
        except FleetPKIError as exc:
            _log.warning("hub: reported patch for %r failed: %s", identity.client_id, exc.code)
            self._send(identity.client_id, twin_response_topic(exc.http_status, rid), b"", QoS(1))
            return
        # 204 with the new reported $version in the topic (ref §1.5).
        topic = twin_response_topic(204, rid, version)
        self._send(identity.client_id, topic, b"", QoS.AT_LEAST_ONCE)

    # -- SUBSCRIBE, UNSUBSCRIBE, PUBACK --

    def on_subscribe(self, link: Link, event: Subscribed) -> None:
        """Grant a device's subscriptions to its own topics; drop it for any other."""
        identity = link.identity
        assert identity is not None
        for subscription in event.subscriptions:
            if not is_own_topic(subscription.topic_filter, identity, is_filter=True):
                _log.warning(
                    "hub: dropped %r: azure.topic_not_allowed: subscribed to %r",
                    identity.client_id,
                    subscription.topic_filter,
                )
                link.close("azure.topic_not_allowed")
                return
        link.write(link.mqtt.suback(event.packet_id))
        self._kick_c2d(identity.client_id)

    def on_unsubscribe(self, link: Link, event: Unsubscribed) -> None:
        """Drop subscriptions (the SDK does this when a handler is set to None)."""
        link.write(link.mqtt.unsuback(event.packet_id))

    def on_puback(self, link: Link, event: PubAckReceived) -> None:
        """A cloud-to-device message was acknowledged: mark it delivered (ref §1.6)."""
        tag = event.message.tag
        if tag is not None and link.identity is not None:
            self._spawn(
                self._in_thread(self.backend.mark_c2d_delivered, link.identity.device_id, tag)
            )

    # -- cloud-to-device (ref §1.6) --

    def _kick_c2d(self, client_id: str) -> None:
        if client_id in self._c2d_busy:
            self._c2d_busy[client_id] = True  # fetch again when the current fetch ends
            return
        link = self._live.get(client_id)
        if link is None or link.identity is None or link.identity.module_id is not None:
            return
        session = link.mqtt.session
        probe = f"{link.identity.topic_base}/messages/devicebound/x"
        if session is None or session.subscription_qos(probe) is None:
            return
        self._c2d_busy[client_id] = False
        self._spawn(self._deliver_c2d(client_id))

    async def _deliver_c2d(self, client_id: str) -> None:
        try:
            again = True
            while again:
                self._c2d_busy[client_id] = False
                messages = await self._in_thread(self.backend.pending_c2d, client_id)
                link = self._live.get(client_id)
                if link is None or link.mqtt.state is not ConnectionState.CONNECTED:
                    return
                session = link.mqtt.session
                assert session is not None
                inflight = {m.tag for m in session.inflight}
                for message in messages:
                    if message.message_id not in inflight:
                        topic = _c2d_topic(client_id, message)
                        link.write(
                            link.mqtt.send_publish(topic, message.payload, tag=message.message_id)
                        )
                again = self._c2d_busy.get(client_id, False)
        except Exception:
            _log.exception("hub: delivering cloud-to-device messages to %r failed", client_id)
        finally:
            self._c2d_busy.pop(client_id, None)

    # -- direct methods (ref §1.5, §3.4) --

    async def invoke_method(
        self,
        device_id: str,
        method_name: str,
        payload: Any = None,
        timeout: float = DEFAULT_METHOD_TIMEOUT,
    ) -> MethodResult:
        """Call a direct method on a connected device and wait for its answer.

        Raises:
            DeviceNotOnline: not connected or not subscribed to methods (404103).
            MethodTimeout: no answer within ``timeout`` seconds (504101).
        """
        rid = uuid.uuid4().hex
        topic = method_request_topic(method_name, rid)
        link = self._live.get(device_id)
        session = link.mqtt.session if link is not None else None
        if link is None or session is None or session.subscription_qos(topic) is None:
            raise DeviceNotOnline(device_id)
        future: asyncio.Future[MethodResult] = asyncio.get_running_loop().create_future()
        key = (device_id, rid)
        self._method_calls[key] = future
        try:
            # Method requests go out at QoS 0 (ref §1.5).
            link.write(link.mqtt.send_publish(topic, json.dumps(payload).encode(), QoS(0)))
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise MethodTimeout(device_id, method_name) from None
        finally:
            self._method_calls.pop(key, None)

    def invoke_method_threadsafe(
        self,
        device_id: str,
        method_name: str,
        payload: Any = None,
        timeout: float = DEFAULT_METHOD_TIMEOUT,
    ) -> MethodResult:
        """`invoke_method` for callers in other threads (a sync REST handler)."""
        assert self._loop is not None, "the broker is not started"
        future = asyncio.run_coroutine_threadsafe(
            self.invoke_method(device_id, method_name, payload, timeout), self._loop
        )
        return future.result(timeout + 5)

    def _method_answered(
        self, identity: DeviceIdentity, answer: MethodResponse, body: bytes
    ) -> None:
        future = self._method_calls.get((identity.client_id, answer.rid))
        if future is None or future.done():
            return
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = body.decode("utf-8", "replace")
        future.set_result(MethodResult(answer.status, payload))

    # -- backend events: live revocation and desired patches --

    def _on_backend_event(self, event: HubEvent) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.handle_event(event)
        else:
            loop.call_soon_threadsafe(self.handle_event, event)

    def handle_event(self, event: HubEvent) -> None:
        """Act on a backend event in the loop: close blocked sessions, push patches, C2D."""
        if isinstance(event, CertificateRevoked):
            self._block(event, "hub.certificate_revoked")
        elif isinstance(event, DeviceBlocked):
            self._block(event, event.reason)
            if event.reason == "hub.unknown_device":  # deleted: its session goes too
                for client_id in [
                    c for c in self._sessions if c.partition("/")[0] == event.device_id
                ]:
                    del self._sessions[client_id]
        elif isinstance(event, DesiredPatched):
            body = json.dumps({**event.patch, "$version": event.version}).encode()
            topic = desired_patch_topic(event.version)
            link = self._live.get(event.device_id)
            session = link.mqtt.session if link is not None else None
            if session is not None and session.subscription_qos(topic) is not None:
                self._send(event.device_id, topic, body, QoS.AT_LEAST_ONCE)
        elif isinstance(event, C2DQueued):
            self._kick_c2d(event.device_id)

    def _block(self, event: CertificateRevoked | DeviceBlocked, reason: str) -> None:
        self._block_epoch += 1
        keys: list[str] = []
        if isinstance(event, CertificateRevoked):
            sha1 = event.sha1.upper() if event.sha1 else None
            serial = event.serial.upper().lstrip("0") if event.serial else None
            if sha1:
                keys.append(f"sha1:{sha1}")
            if serial:
                keys.append(f"serial:{serial}")

            def matches(device: AuthenticatedDevice) -> bool:
                return device.certificate_sha1 == sha1 or (
                    serial is not None and device.certificate_serial.lstrip("0") == serial
                )
        else:
            keys.append(f"device:{event.device_id}")

            def matches(device: AuthenticatedDevice) -> bool:
                return device.device_id == event.device_id

        if self._authenticating:
            for key in keys:
                self._blocked[key] = self._block_epoch
        for client_id, link in list(self._live.items()):
            if link.device is not None and matches(link.device):
                _log.warning("hub: closed %r: %s", client_id, reason)
                link.close(reason)
                if self.on_block_close is not None:
                    self.on_block_close(client_id, reason, time.perf_counter())


_TASKS: set[asyncio.Task[Any]] = set()


def _c2d_topic(device_id: str, message: C2DMessage) -> str:
    system: dict[str, str] = {"message_id": message.message_id}
    application: dict[str, str | None] = {}
    for key, value in message.properties.items():
        attribute = _C2D_SYSTEM_KEYS.get(key)
        if attribute is not None:
            system[attribute] = value
        elif not key.startswith("$."):
            application[key] = value
    return c2d_topic(device_id, MessageProperties(SystemProperties(**system), application))
