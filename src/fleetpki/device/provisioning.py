"""Zero-touch provisioning for the device: ask a DPS where to connect, over MQTT (paho).

The same exchange as the Azure SDK's ``ProvisioningDeviceClient`` with an X.509
certificate (shared/reference/azure-iot-hub-protocol.md §2): CONNECT with the username
``{idScope}/registrations/{registrationId}/api-version=...`` and the device certificate,
subscribe to ``$dps/registrations/res/#``, publish the registration, then poll the
operation until it is ``assigned``; a 429 is sent again after its ``retry-after``; any
other 3xx/4xx, or an outcome of ``failed`` or ``disabled``, raises, as the SDK does.
It speaks to Azure DPS (``global.azure-devices-provisioning.net``) as to fleetpki's own.
"""

from __future__ import annotations

import functools
import json
import queue
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fleetpki.device.identity import DeviceIdentity, client_ssl_context
from fleetpki.device.mqtt_transport import (
    DEFAULT_MQTT_PORT,
    REFUSED_CREDENTIALS,
    ClosingSSLSocket,
    close_socket,
    connack_code,
)
from fleetpki.errors import AuthenticationError, FleetPKIError, ValidationError
from fleetpki.hub.azure.dps import (
    DPS_RESPONSE_FILTER,
    dps_register_topic,
    dps_status_topic,
    dps_username,
    parse_response_topic,
)

__all__ = ["Assignment", "ProvisioningClient"]

#: What the username's ClientVersion names.
_CLIENT_VERSION = "fleetpki-device"
#: The SDK's wait before the first poll, and when no retry-after is given (ref §2).
_DEFAULT_POLL = 2.0
_DEFAULT_TIMEOUT = 30.0
#: A registration that is still assigning after this many polls is given up.
_MAX_POLLS = 30


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where the provisioning service sent the device.

    Attributes:
        assigned_hub: the hub's host name (connect there).
        device_id: the device id in that hub.
        substatus: how it came about (``initialAssignment``, ``deviceDataMigrated``, ...).
        operation_id: the registration operation.
    """

    assigned_hub: str
    device_id: str
    substatus: str | None
    operation_id: str


class ProvisioningClient:
    """One registration with a provisioning service (a new MQTT connection each time).

    Args:
        identity: the device's key and certificate (its CN is the registration id).
        host: the provisioning service's host name (its TLS certificate's name).
        id_scope: the service's ID scope.
        port: its MQTT port (8883, the hub's port on fleetpki).
        connect_host: where to open the TCP connection, when not ``host``.
        ca_bundle: the CAs to trust for the service (default: the identity's bundle).
        timeout: seconds to wait for each answer.
    """

    def __init__(
        self,
        identity: DeviceIdentity,
        host: str,
        id_scope: str,
        *,
        port: int = DEFAULT_MQTT_PORT,
        connect_host: str | None = None,
        ca_bundle: Path | str | None = None,
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> None:
        self.identity = identity
        self.host = host
        self.id_scope = id_scope
        self.port = port
        self.connect_host = connect_host or host
        self._ca_bundle = ca_bundle
        self._timeout = timeout

    def register(self, payload: Any = None) -> Assignment:
        """Register the device and wait until it is assigned.

        Raises:
            AuthenticationError: ``provisioning.refused`` (CONNACK 4 or 5: unknown ID scope,
                no certificate), ``provisioning.registration_refused`` (401: an untrusted
                CA, a revoked certificate, a CN that is not the registration id),
                ``provisioning.disabled`` (a disabled enrollment).
            FleetPKIError: ``provisioning.unreachable``, ``provisioning.timeout``,
                ``provisioning.failed``, ``provisioning.service_refused`` (another 3xx or
                4xx, with the service's code in the message).
        """
        registration_id = self.identity.device_id
        answers: queue.Queue[tuple[int, dict[str, str], Any]] = queue.Queue()
        connacks: queue.Queue[int] = queue.Queue()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=registration_id,
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        client.username_pw_set(dps_username(self.id_scope, registration_id, _CLIENT_VERSION))
        context = client_ssl_context(self.identity, ca_bundle=self._ca_bundle)
        if context.sslsocket_class is ssl.SSLSocket:
            context.sslsocket_class = ClosingSSLSocket
        client.tls_set_context(context)
        client.on_connect = lambda _c, _u, _f, reason, _p: connacks.put(connack_code(reason.value))

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            try:
                status, properties = parse_response_topic(message.topic)
                body = json.loads(message.payload) if message.payload.strip() else {}
            except (ValidationError, ValueError):
                return
            answers.put((status, properties, body))

        client.on_message = on_message
        try:
            client.connect(self.connect_host, self.port, keepalive=60)
        except (OSError, ssl.SSLError) as exc:
            close_socket(client)
            raise FleetPKIError(
                "provisioning.unreachable",
                f"cannot reach the provisioning service at {self.connect_host}:{self.port}",
            ) from exc
        client.loop_start()
        try:
            code = self._get(connacks)
            if code in REFUSED_CREDENTIALS:
                raise AuthenticationError(
                    "provisioning.refused",
                    f"the provisioning service refused the connection (CONNACK {code}): an "
                    "unknown ID scope or no certificate",
                )
            if code != 0:
                raise FleetPKIError("provisioning.refused", f"CONNACK {code}")
            client.subscribe(DPS_RESPONSE_FILTER, qos=1)
            request = json.dumps(
                {"payload": payload, "registrationId": registration_id}, sort_keys=True
            ).encode()
            properties, body = self._ask(client, answers, dps_register_topic, request)
            for _ in range(_MAX_POLLS):
                status = body.get("status")
                if status == "assigned":
                    state = body.get("registrationState") or {}
                    return Assignment(
                        str(state.get("assignedHub")),
                        str(state.get("deviceId")),
                        state.get("substatus"),
                        str(body.get("operationId")),
                    )
                if status != "assigning":
                    state = body.get("registrationState") or {}
                    detail = state.get("errorMessage") or f"the registration is {status}"
                    if status == "disabled":
                        raise AuthenticationError("provisioning.disabled", str(detail))
                    raise FleetPKIError("provisioning.failed", str(detail))
                operation_id = str(body.get("operationId"))
                time.sleep(_wait(properties))
                properties, body = self._ask(
                    client, answers, functools.partial(_status_topic, operation_id), b" "
                )
            raise FleetPKIError("provisioning.timeout", "the registration never ended")
        finally:
            client.loop_stop()
            client.disconnect()
            close_socket(client)

    def _get(self, source: queue.Queue[Any]) -> Any:
        try:
            return source.get(timeout=self._timeout)
        except queue.Empty:
            raise FleetPKIError(
                "provisioning.timeout", "the provisioning service did not answer"
            ) from None

    def _ask(
        self,
        client: mqtt.Client,
        answers: queue.Queue[tuple[int, dict[str, str], Any]],
        topic_for: Callable[[str], str],
        body: bytes,
    ) -> tuple[dict[str, str], dict[str, Any]]:
        """Publish one request until it is not throttled; its 2xx answer's properties and body."""
        while True:
            rid = str(uuid.uuid4())
            client.publish(topic_for(rid), body, qos=1)
            while True:
                status, properties, answer = self._get(answers)
                if properties.get("rid") == rid:
                    break
            if status >= 429:
                time.sleep(_wait(properties))
                continue
            fields = answer if isinstance(answer, dict) else {}
            if status >= 300:
                detail = (
                    f"{status} {fields.get('code') or ''}: {fields.get('message') or 'refused'}"
                )
                if status == 401:
                    raise AuthenticationError("provisioning.registration_refused", detail)
                raise FleetPKIError("provisioning.service_refused", detail)
            if not isinstance(answer, dict):
                raise FleetPKIError("provisioning.bad_answer", "the answer is not a JSON object")
            return properties, answer


def _status_topic(operation_id: str, rid: str) -> str:
    return dps_status_topic(rid, operation_id)


def _wait(properties: dict[str, str]) -> float:
    """The ``retry-after`` of an answer, else the SDK's 2 seconds (ref §2)."""
    text = properties.get("retry-after", "")
    return float(int(text)) if text.isdigit() else _DEFAULT_POLL
