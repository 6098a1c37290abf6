"""The provisioning service's device protocol on the hub's MQTT port (and its WebSockets).

The broker hands a CONNECT whose username is a DPS one (``{idScope}/registrations/
{registrationId}/...``, `fleetpki.hub.azure.dps.is_dps_username`) to this channel. The
connection is then a provisioning client, not a device of the hub: it may subscribe to
``$dps/registrations/res/#`` only and publish only the two DPS requests (ref §2); any
other topic drops it, as on the hub.

* CONNECT: the ID scope must be this installation's and a TLS client certificate must
  have been sent; otherwise CONNACK 5 (the SDK raises a credential error and stops). The
  certificate itself is checked with each registration, by the service.
* A registration or a status request is acknowledged (PUBACK) at once, handed to the
  application's `fleetpki.services.provisioning.ProvisioningService` in the channel's
  thread pool, and answered on ``$dps/registrations/res/{status}/?$rid={rid}``: 202
  ``assigning`` with the operation id to a registration, then 200 with the outcome to
  the poll; an error is its status (401, 400, 404, 429 with ``retry-after``) with DPS's
  error body. The SDK raises on 300-428 and on a status other than assigning or
  assigned, and waits ``retry-after`` on 429 (ref §2), so nothing makes it loop.

Sessions are never kept (DPS treats every session as non-persistent, ref §2).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from fleetpki.errors import FleetPKIError, ThrottledError, ValidationError, http_status_for
from fleetpki.hub.azure.dps import (
    DPS_RESPONSE_FILTER,
    OperationStatusRequest,
    RegisterRequest,
    RegistrationOperation,
    dps_error_body,
    parse_dps_topic,
    parse_dps_username,
    parse_register_body,
    response_topic,
)
from fleetpki.hub.link import Link, ProvisioningClient
from fleetpki.hub.protocol import (
    ConnectionState,
    ConnectRequested,
    ConnectReturnCode,
    Published,
    QoS,
    Subscribed,
)
from fleetpki.services.provisioning_requests import (
    DeviceCredentials,
    RegistrationRequest,
    StatusRequest,
)

__all__ = ["ProvisioningChannel", "ProvisioningClient", "ProvisioningEndpoint"]

_log = logging.getLogger("fleetpki.hub.provisioning")


class ProvisioningEndpoint(Protocol):
    """What the channel needs of the provisioning service (its use cases)."""

    def knows_scope(self, id_scope: str) -> bool:
        """Whether ``id_scope`` is this installation's."""
        ...

    def register(self, request: RegistrationRequest) -> RegistrationOperation:
        """Register a device; see `ProvisioningService.register`."""
        ...

    def operation_status(self, request: StatusRequest) -> RegistrationOperation:
        """A registration operation; see `ProvisioningService.operation_status`."""
        ...


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: dict[str, Any]
    retry_after: int | None = None


class ProvisioningChannel:
    """DPS over MQTT for one broker.

    Args:
        service: the provisioning use cases.
        pool: the threads for service calls (each may touch the database, and call a
            linked hub); the broker gives the channel its own.
        spawn: runs a coroutine as a task the broker keeps.
        utcnow: the clock for error bodies.
    """

    def __init__(
        self,
        service: ProvisioningEndpoint,
        pool: concurrent.futures.Executor,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        utcnow: Callable[[], dt.datetime],
    ) -> None:
        self.service = service
        self._pool = pool
        self._spawn = spawn
        self._utcnow = utcnow

    def connect(self, link: Link, event: ConnectRequested) -> None:
        """Accept a DPS CONNECT (CONNACK 0) or refuse it (CONNACK 5), at once."""
        try:
            username = parse_dps_username(event.username, event.client_id)
        except ValidationError as exc:
            self._refuse(link, event.client_id, exc.code, exc.message)
            return
        if not self.service.knows_scope(username.id_scope):
            self._refuse(link, event.client_id, "provisioning.unknown_id_scope", "unknown ID scope")
            return
        leaf, chain = link.peer_certificates()
        if leaf is None:
            self._refuse(
                link, event.client_id, "provisioning.no_client_certificate", "no certificate"
            )
            return
        link.provisioning = ProvisioningClient(username, DeviceCredentials(leaf, tuple(chain)))
        link.write(link.mqtt.accept(None))
        _log.info("provisioning: %r connected", event.client_id)
        link.process()

    def _refuse(self, link: Link, client_id: str, code: str, message: str) -> None:
        _log.warning("provisioning: refused client %r: %s (%s)", client_id, code, message)
        if link.mqtt.state is ConnectionState.CONNECT_RECEIVED:
            link.write(link.mqtt.refuse(ConnectReturnCode.NOT_AUTHORIZED))
        link.close(code)

    def on_subscribe(self, link: Link, event: Subscribed) -> None:
        """Grant ``$dps/registrations/res/#``; drop the client for any other filter."""
        for subscription in event.subscriptions:
            if subscription.topic_filter != DPS_RESPONSE_FILTER:
                _log.warning(
                    "provisioning: dropped %r: provisioning.topic_not_allowed: subscribed to %r",
                    link.mqtt.connect_packet.client_id if link.mqtt.connect_packet else "?",
                    subscription.topic_filter,
                )
                link.close("provisioning.topic_not_allowed")
                return
        link.write(link.mqtt.suback(event.packet_id))

    def on_publish(self, link: Link, event: Published) -> None:
        """A registration or status request: acknowledge it, answer it when it is done."""
        client = link.provisioning
        assert client is not None
        packet = event.packet
        try:
            request = parse_dps_topic(packet.topic)
        except ValidationError as exc:
            _log.warning(
                "provisioning: dropped %r: %s (%s)",
                client.username.registration_id,
                exc.code,
                exc.message,
            )
            link.close(exc.code)
            return
        if packet.packet_id is not None:
            link.write(link.mqtt.puback(packet.packet_id))
        self._spawn(self._answer(link, client, request, packet.payload))

    async def _answer(
        self,
        link: Link,
        client: ProvisioningClient,
        request: RegisterRequest | OperationStatusRequest,
        body: bytes,
    ) -> None:
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(self._pool, self._serve, client, request, body)
        if link.mqtt.state is not ConnectionState.CONNECTED:
            return  # the device went away meanwhile
        topic = response_topic(answer.status, request.rid, retry_after=answer.retry_after)
        payload = json.dumps(answer.body).encode()
        link.write(link.mqtt.send_publish(topic, payload, QoS.AT_LEAST_ONCE))

    def _serve(
        self,
        client: ProvisioningClient,
        request: RegisterRequest | OperationStatusRequest,
        body: bytes,
    ) -> _Answer:
        username = client.username
        try:
            if isinstance(request, RegisterRequest):
                body_id, payload = parse_register_body(body)
                operation = self.service.register(
                    RegistrationRequest(
                        username.id_scope,
                        username.registration_id,
                        client.credentials,
                        body_registration_id=body_id,
                        payload=payload,
                        source="mqtt",
                    )
                )
                return _Answer(202, operation.assigning().to_json(), operation.retry_after)
            operation = self.service.operation_status(
                StatusRequest(
                    username.id_scope,
                    username.registration_id,
                    request.operation_id,
                    client.credentials,
                )
            )
            return _Answer(200, operation.to_json())
        except FleetPKIError as exc:
            status = http_status_for(exc)
            _log.warning(
                "provisioning: %r: %d %s (%s)",
                username.registration_id,
                status,
                exc.code,
                exc.message,
            )
            retry_after = exc.retry_after if isinstance(exc, ThrottledError) else None
            body_json = dps_error_body(
                status,
                exc.message,
                tracking_id=uuid.uuid4().hex,
                now=self._utcnow(),
                code=exc.code,
            )
            return _Answer(status, body_json, retry_after)
        except Exception:
            tracking = uuid.uuid4().hex
            _log.exception(
                "provisioning: %r failed (tracking id %s)", username.registration_id, tracking
            )
            return _Answer(
                500,
                dps_error_body(500, "internal error", tracking_id=tracking, now=self._utcnow()),
            )
