"""A device's MQTT connection to an IoT hub: Azure IoT Hub's device dialect over paho-mqtt.

Everything follows what Azure IoT Hub itself expects (``shared/reference/azure-iot-hub-
protocol.md`` §1, cited as "ref §1.x"), so the same code talks to Azure and to fleetpki's
hub: MQTT 3.1.1 over TLS 1.2 or later with the device certificate (ref §1.1), client id =
device id, username ``{hostname}/{deviceId}/?api-version=2021-04-12``, no password,
CleanSession 0 (ref §1.3), QoS 1 everywhere (ref §1.5), property bags encoded like the
SDK (ref §1.6, through `fleetpki.hub.azure.topics`).

Threads: paho runs its network loop in a thread of its own. Handlers for cloud-to-device
messages, desired-property patches and direct methods run on one separate handler
thread, so a handler may itself publish and wait for the PUBACK (which the network thread
must be free to receive). Subscriptions are made lazily on first use, like the SDK's, and
made again after a reconnect when the hub did not keep the session (ref §1.8).

A hub that refuses the device (CONNACK 4 or 5: unknown, disabled, revoked) is not retried,
as the Azure SDK does not retry a credential error (ref §1.4); other drops are retried by
paho with a growing delay.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import ssl
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fleetpki.device.identity import DeviceIdentity, client_ssl_context
from fleetpki.device.messages import CloudMessage, MethodReply, MethodRequest, TwinResponse
from fleetpki.device.mqtt_transport import (
    DEFAULT_MQTT_PORT,
    REFUSED_CREDENTIALS,
    ClosingSSLSocket,
    close_socket,
    connack_code,
    mqtt_username,
)
from fleetpki.errors import AuthenticationError, FleetPKIError, ValidationError
from fleetpki.hub.azure.topics import (
    DESIRED_PATCH_FILTER,
    METHODS_FILTER,
    TWIN_RESPONSE_FILTER,
    ClientIdentity,
    MessageProperties,
    SystemProperties,
    decode_property_bag,
    encode_property_bag,
)

__all__ = ["MAX_MESSAGE_SIZE", "DeviceClient"]

_log = logging.getLogger("fleetpki.device.connection")

#: The largest device-to-cloud message Azure IoT Hub accepts, and the SDK sends (ref §1.6).
MAX_MESSAGE_SIZE = 262_144
_DEFAULT_TIMEOUT = 30.0


@dataclass(slots=True)
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    response: TwinResponse | None = None


def _query(text: str) -> Mapping[str, str | None]:
    """The pairs of a topic's ``?`` part, decoded like a property bag (never ``+``)."""
    return decode_property_bag(text).application


class DeviceClient:
    """One device's MQTT connection to an IoT hub.

    Args:
        identity: the device's key and certificate.
        hostname: the hub's host name: in the username, and the name its TLS
            certificate must carry.
        port: the MQTT-over-TLS port (8883 by default).
        connect_host: where to open the TCP connection, when not ``hostname`` (then the
            server certificate must name ``connect_host``).
        ca_bundle: a PEM file of CAs to trust for the hub; by default the identity's CA
            bundle, else the system's roots (what Azure IoT Hub needs).
        keepalive: MQTT keepalive in seconds (the SDK's default: 60).
        client_type: an optional ``DeviceClientType`` for the username.
        ssl_context: a ready TLS context, replacing the one built from the identity.
    """

    def __init__(
        self,
        identity: DeviceIdentity,
        hostname: str,
        *,
        port: int = DEFAULT_MQTT_PORT,
        connect_host: str | None = None,
        ca_bundle: Path | str | None = None,
        keepalive: int = 60,
        client_type: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.hostname = hostname
        self.port = port
        self.connect_host = connect_host or hostname
        self.keepalive = keepalive
        self._ca_bundle = ca_bundle
        self._client_type = client_type
        self._given_context = ssl_context
        self._identity = identity
        self._topics = ClientIdentity(identity.device_id)
        self._lock = threading.Lock()
        self._filters: set[str] = set()
        self._pending: dict[str, _Pending] = {}
        self._suback: dict[int, threading.Event] = {}
        self._early_subacks: set[int] = set()
        self._connected = threading.Event()
        self._connack: int | None = None
        self._connack_event = threading.Event()
        self._refused: int | None = None
        self._c2d_handler: Callable[[CloudMessage], None] | None = None
        self._desired_handler: Callable[[dict[str, Any]], None] | None = None
        self._method_handler: Callable[[MethodRequest], MethodReply] | None = None
        self._handlers = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"fleetpki-device-{identity.device_id}"
        )
        self._client: mqtt.Client | None = None

    # ------------------------------------------------------------------ state

    @property
    def identity(self) -> DeviceIdentity:
        """The identity of the current (or next) connection."""
        return self._identity

    @property
    def device_id(self) -> str:
        """The device id (the MQTT client id)."""
        return self._identity.device_id

    @property
    def username(self) -> str:
        """The CONNECT username."""
        return mqtt_username(self.hostname, self.device_id, client_type=self._client_type)

    @property
    def is_connected(self) -> bool:
        """Whether the hub accepted the current connection and it is up."""
        return self._connected.is_set()

    @property
    def refused_code(self) -> int | None:
        """The CONNACK code of the last refusal (4 or 5: the hub refused the device)."""
        return self._refused

    # ------------------------------------------------------------------ connecting

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        client.username_pw_set(self.username, None)
        context = self._given_context or client_ssl_context(
            self._identity, ca_bundle=self._ca_bundle
        )
        if context.sslsocket_class is ssl.SSLSocket:
            context.sslsocket_class = ClosingSSLSocket
        client.tls_set_context(context)
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def connect(self, timeout: float = _DEFAULT_TIMEOUT) -> None:
        """Open the TLS connection, send CONNECT and wait for CONNACK.

        Raises:
            AuthenticationError: ``hub.refused`` when the hub answers CONNACK 4 or 5
                (unknown, disabled or revoked device, untrusted CA).
            FleetPKIError: ``hub.unreachable`` (TCP or TLS failure), ``hub.refused``
                (another CONNACK code) or ``hub.timeout``.
        """
        if self._client is not None:
            return
        self._connected.clear()
        self._connack_event.clear()
        self._connack = self._refused = None
        with self._lock:
            self._suback.clear()
            self._early_subacks.clear()
        client = self._new_client()
        try:
            client.connect(self.connect_host, self.port, keepalive=self.keepalive)
        except (OSError, ssl.SSLError, ValueError) as exc:
            close_socket(client)
            raise FleetPKIError(
                "hub.unreachable",
                f"cannot connect to {self.connect_host}:{self.port}: {type(exc).__name__}: {exc}",
            ) from exc
        self._client = client
        client.loop_start()
        if not self._connack_event.wait(timeout):
            self._shutdown_client()
            raise FleetPKIError("hub.timeout", "no CONNACK from the hub in time")
        code = self._connack
        if code is None:
            self._shutdown_client()
            raise FleetPKIError("hub.closed", "the hub closed the connection before CONNACK")
        if code != 0:
            self._shutdown_client()
            if code in REFUSED_CREDENTIALS:
                raise AuthenticationError(
                    "hub.refused", f"the hub refused device {self.device_id} (CONNACK {code})"
                )
            raise FleetPKIError("hub.refused", f"the hub refused the connection (CONNACK {code})")

    def _shutdown_client(self) -> None:
        client, self._client = self._client, None
        self._connected.clear()
        if client is None:
            return
        client.disconnect()
        client.loop_stop()
        close_socket(client)

    def disconnect(self) -> None:
        """Send DISCONNECT and close the connection (the hub keeps the session)."""
        self._shutdown_client()
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for waiter in pending:
            waiter.event.set()

    def close(self) -> None:
        """Disconnect and stop the handler thread."""
        self.disconnect()
        self._handlers.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def reconnect(
        self, identity: DeviceIdentity | None = None, *, timeout: float = _DEFAULT_TIMEOUT
    ) -> None:
        """Disconnect and connect again, with ``identity``'s new certificate if given.

        The old connection is closed first: IoT Hub allows one connection per device id
        and a second would drop the first (ref §1.4). Subscriptions live on in the hub's
        session; they are made again if the hub did not keep it.

        Raises:
            ValidationError: ``device.other_identity`` for another device's identity.
            AuthenticationError / FleetPKIError: as `connect`.
        """
        if identity is not None:
            if identity.device_id != self.device_id:
                raise ValidationError(
                    "device.other_identity", "a connection cannot change its device id"
                )
            self._identity = identity
        self._shutdown_client()
        self.connect(timeout)

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: Any,
        reason_code: Any,
        _properties: Any,
    ) -> None:
        code = connack_code(int(reason_code.value))
        self._connack = code
        self._connack_event.set()
        if code != 0:
            self._refused = code
            _log.warning("hub refused device %s: CONNACK %d", self.device_id, code)
            if code in REFUSED_CREDENTIALS:
                # Like the Azure SDK after a credential error: stop retrying (ref §1.4).
                client.disconnect()
            return
        self._connected.set()
        _log.info("device %s connected to %s:%d", self.device_id, self.connect_host, self.port)
        if not flags.session_present:
            with self._lock:
                filters = sorted(self._filters)
            for topic_filter in filters:
                _, mid = client.subscribe(topic_filter, qos=1)
                if mid is not None:
                    with self._lock:  # nobody waits for this SUBACK; keep it from the set
                        self._suback[mid] = threading.Event()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _props: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._connack_event.set()  # a connect() waiting for CONNACK learns of the drop
        if was_connected:
            _log.info("device %s disconnected (%s)", self.device_id, reason_code)

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reason_codes: Any, _props: Any
    ) -> None:
        if any(getattr(code, "is_failure", False) for code in reason_codes):
            # The Azure SDK ignores a SUBACK 0x80 too (ref §1.8); say it in the log.
            _log.warning("hub refused a subscription of device %s", self.device_id)
        with self._lock:
            event = self._suback.pop(mid, None)
            if event is None:
                self._early_subacks.add(mid)
        if event is not None:
            event.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic, payload = message.topic, bytes(message.payload)
        try:
            self._dispatch(topic, payload)
        except (FleetPKIError, ValueError) as exc:
            _log.warning(
                "device %s dropped a message it cannot read (%s)",
                self.device_id,
                type(exc).__name__,
            )

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if topic.startswith("$iothub/twin/res/"):
            head, _, query = topic.partition("?")
            status = int(head.rstrip("/").split("/")[3])
            pairs = _query(query)
            version = pairs.get("$version")
            rid = pairs.get("$rid") or ""
            response = TwinResponse(status, int(version) if version else None, payload)
            with self._lock:
                waiter = self._pending.pop(rid, None)
            if waiter is not None:
                waiter.response = response
                waiter.event.set()
        elif topic.startswith("$iothub/twin/PATCH/properties/desired/"):
            handler = self._desired_handler
            if handler is not None:
                patch = json.loads(payload or b"{}")
                self._handlers.submit(self._run_handler, handler, patch)
        elif topic.startswith("$iothub/methods/POST/"):
            head, _, query = topic.partition("?")
            name = decode_property_bag(f"n={head.rstrip('/').split('/')[3]}").application["n"]
            method_rid = _query(query).get("$rid")
            if not method_rid or name is None:
                raise ValueError("a method request without a name or $rid")
            request = MethodRequest(name, method_rid, json.loads(payload or b"null"))
            self._handlers.submit(self._answer_method, request)
        elif topic.startswith(f"{self._topics.topic_base}/messages/devicebound"):
            c2d = self._c2d_handler
            bag = topic.split("/messages/devicebound", 1)[1].lstrip("/")
            if c2d is not None:
                message = CloudMessage(payload, decode_property_bag(bag))
                self._handlers.submit(self._run_handler, c2d, message)

    def _run_handler(self, handler: Callable[[Any], None], argument: Any) -> None:
        try:
            handler(argument)
        except Exception:  # a handler's failure must not stop the connection
            _log.exception("a message handler of device %s failed", self.device_id)

    def _answer_method(self, request: MethodRequest) -> None:
        handler = self._method_handler
        try:
            result = handler(request) if handler is not None else MethodReply(404, None)
        except Exception:
            _log.exception("method handler %r of device %s failed", request.name, self.device_id)
            result = MethodReply(500, {"error": "the method handler failed"})
        topic = f"$iothub/methods/res/{result.status}/?$rid={quote(request.rid, safe='')}"
        try:
            self._publish(topic, json.dumps(result.payload).encode(), _DEFAULT_TIMEOUT)
        except FleetPKIError as exc:
            _log.warning("device %s could not answer a method (%s)", self.device_id, exc.code)

    # ------------------------------------------------------------------ publishing

    def _require(self) -> mqtt.Client:
        client = self._client
        if client is None:
            raise FleetPKIError("hub.not_connected", "the device is not connected")
        return client

    def _publish(self, topic: str, payload: bytes, timeout: float) -> None:
        client = self._require()
        info = client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise FleetPKIError("hub.not_connected", f"the message was not sent: {exc}") from exc
        if not info.is_published():
            raise FleetPKIError("hub.timeout", "no PUBACK from the hub in time")

    def _subscribe(self, topic_filter: str, timeout: float) -> None:
        with self._lock:
            if topic_filter in self._filters:
                return
            self._filters.add(topic_filter)
        client = self._client
        if client is None or not self.is_connected:
            return  # subscribed on (re)connect when the session is new
        event = threading.Event()
        result, mid = client.subscribe(topic_filter, qos=1)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            with self._lock:
                self._filters.discard(topic_filter)
            raise FleetPKIError("hub.not_connected", "the subscription was not sent")
        with self._lock:
            # The SUBACK may have been handled already, before the waiter was in place.
            if mid in self._early_subacks:
                self._early_subacks.discard(mid)
                event.set()
            else:
                self._suback[mid] = event
        if not event.wait(timeout):
            raise FleetPKIError("hub.timeout", "no SUBACK from the hub in time")

    def send_telemetry(
        self,
        body: bytes | str | Mapping[str, Any],
        *,
        properties: Mapping[str, str] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> None:
        """Send a device-to-cloud message at QoS 1 and wait for the PUBACK (ref §1.5).

        Args:
            body: bytes as they are, text as UTF-8, a mapping as JSON (then the content
                type defaults to ``application/json`` and the encoding to ``utf-8``).
            properties: application properties (strings).
            message_id / correlation_id / content_type / content_encoding: the system
                properties ``$.mid``, ``$.cid``, ``$.ct`` and ``$.ce``.
            timeout: seconds to wait for the PUBACK.

        Raises:
            ValidationError: ``hub.message_too_large`` over 256 KiB, or a property named
                like a system property.
            FleetPKIError: ``hub.not_connected`` or ``hub.timeout``.
        """
        if isinstance(body, Mapping):
            payload = json.dumps(body).encode()
            content_type = content_type or "application/json"
            content_encoding = content_encoding or "utf-8"
        else:
            payload = body.encode() if isinstance(body, str) else bytes(body)
        if len(payload) > MAX_MESSAGE_SIZE:
            raise ValidationError(
                "hub.message_too_large", f"a message may carry at most {MAX_MESSAGE_SIZE} bytes"
            )
        bag = encode_property_bag(
            MessageProperties(
                SystemProperties(
                    message_id=message_id,
                    correlation_id=correlation_id,
                    content_type=content_type,
                    content_encoding=content_encoding,
                ),
                dict(properties or {}),
            )
        )
        self._publish(f"{self._topics.topic_base}/messages/events/{bag}", payload, timeout)

    # ------------------------------------------------------------------ handlers

    def on_cloud_message(
        self, handler: Callable[[CloudMessage], None] | None, *, timeout: float = _DEFAULT_TIMEOUT
    ) -> None:
        """Receive cloud-to-device messages with ``handler`` (on the handler thread)."""
        self._c2d_handler = handler
        if handler is not None:
            self._subscribe(f"{self._topics.topic_base}/messages/devicebound/#", timeout)

    def on_desired_patch(
        self,
        handler: Callable[[dict[str, Any]], None] | None,
        *,
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> None:
        """Receive desired-property patches (with their ``$version``) with ``handler``."""
        self._desired_handler = handler
        if handler is not None:
            self._subscribe(DESIRED_PATCH_FILTER, timeout)

    def on_method(
        self,
        handler: Callable[[MethodRequest], MethodReply] | None,
        *,
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> None:
        """Answer direct methods with ``handler``; its result goes back with the ``$rid``.

        A handler that raises answers 500; with no handler, methods are answered 404.
        """
        self._method_handler = handler
        if handler is not None:
            self._subscribe(METHODS_FILTER, timeout)

    # ------------------------------------------------------------------ twins

    def _twin_request(self, topic: str, body: bytes, timeout: float) -> TwinResponse:
        self._subscribe(TWIN_RESPONSE_FILTER, timeout)
        rid = str(uuid.uuid4())
        waiter = _Pending()
        with self._lock:
            self._pending[rid] = waiter
        try:
            self._publish(f"{topic}/?$rid={rid}", body, timeout)
            if not waiter.event.wait(timeout):
                raise FleetPKIError("hub.timeout", "no twin response from the hub in time")
        finally:
            with self._lock:
                self._pending.pop(rid, None)
        response = waiter.response
        if response is None:
            raise FleetPKIError("hub.not_connected", "the connection closed before the answer")
        if response.status >= 300:
            raise FleetPKIError(
                "hub.twin_error", f"the hub answered the twin request with {response.status}"
            )
        return response

    def get_twin(self, *, timeout: float = _DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The device twin: ``{"desired": {...}, "reported": {...}}`` with ``$version``s.

        Raises:
            FleetPKIError: ``hub.twin_error`` (status 300 or more), ``hub.timeout``,
                ``hub.not_connected``.
        """
        # The SDK sends a single space as the GET body (ref §1.5).
        response = self._twin_request("$iothub/twin/GET", b" ", timeout)
        twin: dict[str, Any] = json.loads(response.body or b"{}")
        return twin

    def patch_reported(
        self, patch: Mapping[str, Any], *, timeout: float = _DEFAULT_TIMEOUT
    ) -> int | None:
        """Update reported properties; returns the new reported ``$version`` (ref §1.5).

        Raises:
            FleetPKIError: as `get_twin`.
        """
        response = self._twin_request(
            "$iothub/twin/PATCH/properties/reported", json.dumps(dict(patch)).encode(), timeout
        )
        return response.version
