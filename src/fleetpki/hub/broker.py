"""The hub's broker: MQTT session events dispatched onto Azure IoT Hub's device dialect.

Theory of operation
-------------------
The listener (`fleetpki.hub.server`) turns bytes into `ServerConnection` events and
hands each to a `Broker` method together with the `Link` it came from (the connection
seen from here: write bytes, close). The broker keeps the session registry (the live
connection and the persistent session of each client id) and dispatches; each concern
is its own module:

* CONNECT (ref §1.3, §4.2), here: the username must be ``{host}/{clientId}/?...`` for
  one of the hub's names. A CONNECT with a password is a symmetric-key device: the
  password (a SAS token), the client id and the username's host go to
  `HubBackend.authenticate_token`; without one, the TLS client certificate, its chain
  and the client id go to `HubBackend.authenticate` (both the one policy,
  `fleetpki.hub.policy`). Every refusal is CONNACK 5 and one log line with the reason
  code, never a TLS abort (ref §1.4); while the database does not answer it is
  CONNACK 3 (server unavailable), which the SDKs retry, so devices come back by
  themselves once it does. An accepted client takes over the client id (a previous
  connection is closed) and gets its persistent session back (§1.8). With several hub
  nodes on one database, the node announces the session (`HubBackend.open_session`)
  and a node holding an older session of that client id closes it (`SessionOpened`). A session
  authenticated by a SAS token ends when the token expires (``hub.sas_expired`` in the
  log; the SDK renews its token before that and reconnects with the new one).
* Connection state: an accepted device's connect, and the end of its connection (clean
  or not, a revocation or a block, a takeover by a newer connection, the hub
  stopping), are recorded in the registry through `HubBackend.record_connections`,
  queued with telemetry (`fleetpki.hub.telemetry_batcher`) so they keep their order
  with the device's messages; the CONNACK does not wait for them.
* Telemetry (ref §1.5, §1.6): `fleetpki.hub.telemetry_batcher`, PUBACK after commit.
* Twins (ref §1.7): `fleetpki.hub.twins`; direct methods (§3.4): `fleetpki.hub.methods`;
  cloud-to-device messages (§1.6): `fleetpki.hub.c2d`.
* A device may publish and subscribe only on its own topics; anything else drops the
  connection with a log line.
* A CONNECT with a DPS username (``{idScope}/registrations/{registrationId}/...``) is
  a provisioning client: `fleetpki.hub.provisioning` serves it, on the same port.
* Backend events (revocation, disabled or deleted device, a replaced symmetric key)
  close the live session at once, and refuse a CONNECT of that device being
  authenticated (`fleetpki.hub.blocks`).

The broker never blocks the event loop: every call into the `HubBackend` (the
database) runs in a thread pool and its answer is written when it comes back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from cryptography import x509

from fleetpki.errors import AuthenticationError, UnavailableError
from fleetpki.hub.azure.dps import is_dps_username
from fleetpki.hub.azure.topics import (
    AzureProtocolError,
    MethodResponse,
    Telemetry,
    TwinGetRequest,
    TwinReportedPatch,
    is_own_topic,
    is_plain_telemetry,
    parse_device_topic,
    parse_username,
)
from fleetpki.hub.backend import (
    AuthenticatedDevice,
    C2DQueued,
    CertificateRevoked,
    ConnectionChange,
    DesiredPatched,
    DeviceBlocked,
    DeviceKeysReplaced,
    HubBackend,
    HubEvent,
    SessionOpened,
    TelemetryRecord,
)
from fleetpki.hub.blocks import BlockList
from fleetpki.hub.c2d import C2DDelivery
from fleetpki.hub.deadlines import ConnectionDeadlines
from fleetpki.hub.link import Link
from fleetpki.hub.methods import (
    DEFAULT_METHOD_TIMEOUT,
    MethodCalls,
    MethodResult,
)
from fleetpki.hub.policy import Refusal
from fleetpki.hub.protocol import (
    ConnectionState,
    ConnectRequested,
    ConnectReturnCode,
    PubAckReceived,
    Published,
    QoS,
    SessionState,
    Subscribed,
    Unsubscribed,
)
from fleetpki.hub.provisioning import ProvisioningChannel, ProvisioningEndpoint
from fleetpki.hub.telemetry_batcher import (
    DEFAULT_BATCH_WINDOW,
    TelemetryBatcher,
    plain_telemetry_record,
    telemetry_record,
)
from fleetpki.hub.twins import TwinChannel

__all__ = ["Broker"]

_log = logging.getLogger("fleetpki.hub")

_T = TypeVar("_T")


class Broker:
    """The Azure IoT Hub dialect over MQTT sessions, for one hub.

    Args:
        backend: registry, trust, storage and events.
        hostnames: the names the hub answers to, checked in CONNECT usernames.
        batch_window: how long a telemetry batch collects messages (seconds).
        utcnow: the clock for authentication and enqueued times.
        workers: threads for backend calls (authentication, twins, C2D).
        provisioning: the provisioning service, served to CONNECTs with a DPS username
            (`fleetpki.hub.provisioning`); without it they are refused as bad usernames.
    """

    def __init__(
        self,
        backend: HubBackend,
        *,
        hostnames: Iterable[str] = ("localhost",),
        batch_window: float = DEFAULT_BATCH_WINDOW,
        utcnow: Callable[[], dt.datetime] | None = None,
        workers: int = 4,
        provisioning: ProvisioningEndpoint | None = None,
    ) -> None:
        self.backend = backend
        self.hostnames = tuple(hostnames)
        self._utcnow = utcnow or (lambda: dt.datetime.now(dt.UTC))
        self._arrival: dt.datetime | None = None  # see _arrival_time
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "fleetpki-hub")
        # One thread for telemetry commits keeps them in order and never concurrent.
        self._store_pool = concurrent.futures.ThreadPoolExecutor(1, "fleetpki-hub-store")
        self._sessions: dict[str, SessionState] = {}
        self._live: dict[str, Link] = {}
        # The order of each live session among the hub nodes (HubBackend.open_session),
        # and, for client ids being admitted, the newest order another node announced.
        self._orders: dict[str, int] = {}
        self._connecting: dict[str, int] = {}
        # The session id of each connection whose connect was recorded (_connection_changed).
        self._run = secrets.token_hex(6)
        self._serials = itertools.count(1)
        self._connection_ids: dict[Link, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batcher = TelemetryBatcher(
            self._store_telemetry, batch_window, self._record_connections
        )
        self._twins = TwinChannel(backend, self._pool, self._send)
        self._methods = MethodCalls()
        self._c2d = C2DDelivery(backend, self._pool, self._live, self._spawn)
        self._blocks = BlockList()
        # Registrations may call a linked hub over the network: their own threads, so a
        # slow hub never holds up the connects and twins of the hub's devices.
        self._provisioning_pool = concurrent.futures.ThreadPoolExecutor(
            workers, "fleetpki-provisioning"
        )
        self._provisioning = (
            ProvisioningChannel(provisioning, self._provisioning_pool, self._spawn, self._utcnow)
            if provisioning is not None
            else None
        )
        # The timers that end SAS sessions at their token's expiry, by connection.
        self._expiries: dict[Link, asyncio.TimerHandle] = {}
        #: The open connections' MQTT deadlines, behind one timer (`ConnectionDeadlines`).
        self.deadlines = ConnectionDeadlines()
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
        self.deadlines.stop()
        live = list(self._live.values())
        self._live.clear()
        for link in live:
            self._connection_changed(link, connected=False)
        self._batcher.stop_retrying()
        await self._batcher.drain()
        for link in live:
            link.close("hub.shutdown")
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._provisioning_pool.shutdown(wait=False, cancel_futures=True)
        self._store_pool.shutdown(wait=True)

    @property
    def connected_device_count(self) -> int:
        """How many clients are connected and accepted."""
        return len(self._live)

    def is_connected(self, client_id: str) -> bool:
        """Whether ``client_id`` has a live, accepted connection."""
        return client_id in self._live

    async def _in_thread(self, function: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def _store_telemetry(self, records: list[TelemetryRecord]) -> None:
        await asyncio.get_running_loop().run_in_executor(
            self._store_pool, self.backend.store_telemetry, records
        )

    async def _record_connections(self, changes: list[ConnectionChange]) -> None:
        await asyncio.get_running_loop().run_in_executor(
            self._store_pool, self.backend.record_connections, changes
        )

    def _connection_changed(self, link: Link, *, connected: bool) -> None:
        """Queue a device's connect or disconnect for the registry (modules have no state).

        Both name the connection (a session id of this run), so that a disconnect the
        registry sees after the device's next connect (here or on another node) is
        recognised as stale."""
        identity = link.identity
        if identity is not None and identity.module_id is None:
            session: str | None
            if connected:
                session = self._connection_ids[link] = f"{self._run}-{next(self._serials)}"
                order = self._orders.get(identity.client_id, 0)
            else:
                session, order = self._connection_ids.pop(link, None), 0
            self._batcher.add_connection(
                ConnectionChange(identity.device_id, connected, self._utcnow(), session, order)
            )

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- CONNECT (ref §1.3, §1.4, §4.2) --

    def on_connect(self, link: Link, event: ConnectRequested) -> None:
        """Authenticate a CONNECT in the background; answer CONNACK 0 or 5."""
        self._spawn(self._connect(link, event))

    def _refuse(
        self,
        link: Link,
        client_id: str,
        code: str,
        message: str,
        return_code: ConnectReturnCode = ConnectReturnCode.NOT_AUTHORIZED,
    ) -> None:
        _log.warning("hub: refused client %r: %s (%s)", client_id, code, message)
        if link.mqtt.state is ConnectionState.CONNECT_RECEIVED:
            link.write(link.mqtt.refuse(return_code))
        link.close(code)

    async def _connect(self, link: Link, event: ConnectRequested) -> None:
        client_id = event.client_id
        if self._provisioning is not None and is_dps_username(event.username, client_id):
            self._provisioning.connect(link, event)
            return
        try:
            username = parse_username(event.username, client_id, hub_hostnames=self.hostnames)
        except AzureProtocolError as exc:
            self._refuse(link, client_id, exc.code, exc.message)
            return
        password = event.password
        leaf_der, others = link.peer_certificates()
        if password is None and leaf_der is None:
            refusal = Refusal.NO_CLIENT_CERTIFICATE
            self._refuse(link, client_id, refusal.code, refusal.message)
            return
        epoch = self._blocks.begin_connect()
        device = None
        order = 0
        # Other nodes' announcements for this client id while it is being admitted here.
        self._connecting.setdefault(client_id, 0)
        try:
            if password is not None:
                device, order = await self._in_thread(
                    self._admit, client_id, self._authenticate_token, password, username.host
                )
            else:
                assert leaf_der is not None
                device, order = await self._in_thread(
                    self._admit, client_id, self._authenticate, leaf_der, others
                )
        except AuthenticationError as exc:
            self._refuse(link, client_id, exc.code, exc.message)
            return
        except UnavailableError as exc:
            # Not the device's fault: CONNACK 3, which the SDKs retry (MQTT 3.1.1 §3.2.2.3).
            code = ConnectReturnCode.SERVER_UNAVAILABLE
            self._refuse(link, client_id, exc.code, exc.message, code)
            return
        except Exception:
            _log.exception("hub: authenticating %r failed", client_id)
            refusal = Refusal.INTERNAL_ERROR
            self._refuse(link, client_id, refusal.code, refusal.message)
            return
        finally:
            blocked = self._blocks.end_connect(device, epoch)
            newer_elsewhere = self._connecting.pop(client_id, 0)
        if blocked is not None:
            self._refuse(link, client_id, blocked, "blocked while connecting")
            return
        assert device is not None  # every refusal above returned
        if link.mqtt.state is not ConnectionState.CONNECT_RECEIVED:
            return  # the client went away while we were checking
        old = self._live.get(client_id)
        if old is not None and old is not link:
            # One connection per client id: the newer one wins (ref §1.4).
            _log.info("hub: client %r connected again; closing its previous connection", client_id)
            old.close("hub.taken_over")
            self._connection_changed(old, connected=False)
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
        self._orders[client_id] = order
        self._connection_changed(link, connected=True)
        _log.info("hub: device %r connected", client_id)
        if newer_elsewhere > order:
            # Another node accepted it after this one did, while it was admitted here.
            _log.info("hub: client %r connected to another hub node; closing it here", client_id)
            link.close("hub.taken_over")
            return
        if device.expires_at is not None:
            self._end_at_expiry(link, client_id, device.expires_at)
        link.process()
        self._c2d.kick(client_id)

    def _end_at_expiry(self, link: Link, client_id: str, expires_at: dt.datetime) -> None:
        """Close ``link`` when its SAS token expires, as Azure ends such a session."""
        delay = max(0.0, (expires_at - self._utcnow()).total_seconds())

        def expire() -> None:
            self._expiries.pop(link, None)
            _log.info("hub: closed %r: %s", client_id, Refusal.SAS_EXPIRED.code)
            link.close(Refusal.SAS_EXPIRED.code)

        self._expiries[link] = asyncio.get_running_loop().call_later(delay, expire)

    def _admit(
        self, client_id: str, authenticate: Callable[..., AuthenticatedDevice], *args: Any
    ) -> tuple[AuthenticatedDevice, int]:
        """Authenticate (in a worker thread), then announce the session to the other hub
        nodes (`HubBackend.open_session`): the device and the session's order."""
        device = authenticate(*args, client_id)
        return device, self.backend.open_session(client_id)

    def _authenticate_token(
        self, password: bytes, host: str, client_id: str
    ) -> AuthenticatedDevice:
        try:
            token = password.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Refusal.SAS_MALFORMED.error() from exc
        return self.backend.authenticate_token(token, client_id, host, self._utcnow())

    def _authenticate(
        self, leaf_der: bytes, others: Sequence[bytes], client_id: str
    ) -> AuthenticatedDevice:
        try:
            leaf = x509.load_der_x509_certificate(leaf_der)
            chain = [x509.load_der_x509_certificate(der) for der in others]
        except ValueError as exc:
            raise Refusal.BAD_CERTIFICATE.error() from exc
        return self.backend.authenticate(leaf, chain, client_id, self._utcnow())

    def connection_lost(self, link: Link) -> None:
        """Forget a closed connection; keep its session if CleanSession was 0."""
        timer = self._expiries.pop(link, None)
        if timer is not None:
            timer.cancel()
        connect = link.mqtt.connect_packet
        if connect is None or link.device is None:
            return
        client_id = connect.client_id
        if self._live.get(client_id) is link:
            del self._live[client_id]
            self._orders.pop(client_id, None)
            self._connection_changed(link, connected=False)
            _log.info("hub: device %r disconnected", client_id)
            if connect.clean_session:
                self._sessions.pop(client_id, None)

    # -- PUBLISH from the device (ref §1.5) --

    def on_publish(self, link: Link, event: Published) -> None:
        """Route a device's PUBLISH: telemetry, a twin request or a method response."""
        if link.provisioning is not None and self._provisioning is not None:
            self._provisioning.on_publish(link, event)
            return
        identity = link.identity
        assert identity is not None
        packet = event.packet
        if is_plain_telemetry(packet.topic, identity):  # the hot path: no properties to decode
            record = plain_telemetry_record(
                identity, packet.payload, retain=packet.retain, enqueued_at=self._arrival_time()
            )
            self._batcher.add(record, link, packet.packet_id)
            return
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
            record = telemetry_record(
                identity,
                message,
                packet.payload,
                retain=packet.retain,
                enqueued_at=self._arrival_time(),
            )
            self._batcher.add(record, link, packet.packet_id)
            return
        # Requests are answered on their own topics, so acknowledge them at once.
        if packet.packet_id is not None:
            link.write(link.mqtt.puback(packet.packet_id))
        if isinstance(message, MethodResponse):
            self._methods.answered(identity, message, packet.payload)
        elif isinstance(message, TwinGetRequest):
            self._spawn(self._twins.get(identity, message.rid))
        elif isinstance(message, TwinReportedPatch):
            self._spawn(self._twins.patch_reported(identity, message.rid, packet.payload))

    def _arrival_time(self) -> dt.datetime:
        """The enqueued time of a device's message: the clock, read once per turn of the
        event loop, so the messages handled in one turn (read from the sockets together)
        share it. One reading, and one object the store formats once, for many messages."""
        now = self._arrival
        if now is None:
            now = self._arrival = self._utcnow()
            if self._loop is not None:
                self._loop.call_soon(self._forget_arrival)
            else:
                self._arrival = None
        return now

    def _forget_arrival(self) -> None:
        self._arrival = None

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

    # -- SUBSCRIBE, UNSUBSCRIBE, PUBACK --

    def on_subscribe(self, link: Link, event: Subscribed) -> None:
        """Grant a device's subscriptions to its own topics; drop it for any other."""
        if link.provisioning is not None and self._provisioning is not None:
            self._provisioning.on_subscribe(link, event)
            return
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
        self._c2d.kick(identity.client_id)

    def on_unsubscribe(self, link: Link, event: Unsubscribed) -> None:
        """Drop subscriptions (the SDK does this when a handler is set to None)."""
        link.write(link.mqtt.unsuback(event.packet_id))

    def on_puback(self, link: Link, event: PubAckReceived) -> None:
        """A cloud-to-device message was acknowledged: mark it delivered (ref §1.6)."""
        tag = event.message.tag
        if tag is not None:
            self._c2d.acknowledged(link, tag)

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
        link = self._live.get(device_id)
        return await self._methods.invoke(link, device_id, method_name, payload, timeout)

    # -- backend events: live revocation, desired patches, C2D --

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
            self._block(event, Refusal.CERTIFICATE_REVOKED.code)
        elif isinstance(event, DeviceKeysReplaced):
            self._block(event, "hub.sas_key_replaced")
        elif isinstance(event, DeviceBlocked):
            self._block(event, event.reason)
            if event.reason == Refusal.UNKNOWN_DEVICE.code:  # deleted: its session goes too
                for client_id in [
                    c for c in self._sessions if c.partition("/")[0] == event.device_id
                ]:
                    del self._sessions[client_id]
        elif isinstance(event, DesiredPatched):
            self._twins.desired_patched(event, self._live.get(event.device_id))
        elif isinstance(event, C2DQueued):
            self._c2d.kick(event.device_id)
        elif isinstance(event, SessionOpened):
            self._session_opened_elsewhere(event)

    def _session_opened_elsewhere(self, event: SessionOpened) -> None:
        """One connection per client id across hub nodes too: the newer one wins."""
        client_id = event.client_id
        if client_id in self._connecting:
            self._connecting[client_id] = max(self._connecting[client_id], event.order)
        link = self._live.get(client_id)
        if link is not None and self._orders.get(client_id, 0) < event.order:
            _log.info(
                "hub: client %r connected to hub node %s; closing it here", client_id, event.node
            )
            link.close("hub.taken_over")

    def _block(
        self, event: CertificateRevoked | DeviceBlocked | DeviceKeysReplaced, reason: str
    ) -> None:
        matches = self._blocks.block(event)
        for client_id, link in list(self._live.items()):
            if link.device is not None and matches(link.device):
                _log.warning("hub: closed %r: %s", client_id, reason)
                link.close(reason)
                if self.on_block_close is not None:
                    self.on_block_close(client_id, reason, time.perf_counter())
