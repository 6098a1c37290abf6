"""Device twins over MQTT (ref §1.5, §1.7): twin GET and reported patches, desired patches pushed.

Requests are answered on the requester's connection whatever it subscribed to
(ref §1.7); desired-property patches are pushed only to a session that subscribed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from collections.abc import Callable

from fleetpki.errors import FleetPKIError
from fleetpki.hub.azure.topics import ClientIdentity, desired_patch_topic, twin_response_topic
from fleetpki.hub.backend import DesiredPatched, HubBackend
from fleetpki.hub.link import Link
from fleetpki.hub.protocol import QoS

__all__ = ["Send", "TwinChannel"]

_log = logging.getLogger("fleetpki.hub")

#: ``send(client_id, topic, payload, qos)``: publish to a client (the broker's); whether sent.
Send = Callable[[str, str, bytes, QoS], bool]


class TwinChannel:
    """The twin side of the device dialect, on the broker's loop.

    Args:
        backend: where twins are read and reported patches stored.
        executor: the broker's thread pool (the backend may block on the database).
        send: publishes to a client.
    """

    def __init__(
        self, backend: HubBackend, executor: concurrent.futures.Executor, send: Send
    ) -> None:
        self._backend = backend
        self._executor = executor
        self._send = send

    async def get(self, identity: ClientIdentity, rid: str) -> None:
        """Answer a twin GET with the desired and reported properties (ref §1.5)."""
        loop = asyncio.get_running_loop()
        try:
            twin = await loop.run_in_executor(
                self._executor, self._backend.get_twin, identity.device_id
            )
        except FleetPKIError as exc:
            _log.warning("hub: twin GET for %r failed: %s", identity.client_id, exc.code)
            self._send(identity.client_id, twin_response_topic(exc.http_status, rid), b"", QoS(1))
            return
        body = json.dumps(twin.document(), separators=(",", ":")).encode()
        # Delivered whatever the client subscribed to (ref §1.7).
        self._send(identity.client_id, twin_response_topic(200, rid), body, QoS.AT_LEAST_ONCE)

    async def patch_reported(self, identity: ClientIdentity, rid: str, payload: bytes) -> None:
        """Store a reported-properties patch; answer 204 with the new version, or the error."""
        try:
            patch = json.loads(payload)
        except ValueError:
            patch = None
        if not isinstance(patch, dict):
            self._send(identity.client_id, twin_response_topic(400, rid), b"", QoS(1))
            return
        loop = asyncio.get_running_loop()
        try:
            version = await loop.run_in_executor(
                self._executor, self._backend.patch_reported, identity.device_id, patch
            )
        except FleetPKIError as exc:
            _log.warning("hub: reported patch for %r failed: %s", identity.client_id, exc.code)
            self._send(identity.client_id, twin_response_topic(exc.http_status, rid), b"", QoS(1))
            return
        # 204 with the new reported $version in the topic (ref §1.5).
        topic = twin_response_topic(204, rid, version)
        self._send(identity.client_id, topic, b"", QoS.AT_LEAST_ONCE)

    def desired_patched(self, event: DesiredPatched, link: Link | None) -> None:
        """Push a desired patch to the device's connection if it subscribed to patches."""
        body = json.dumps({**event.patch, "$version": event.version}).encode()
        topic = desired_patch_topic(event.version)
        session = link.mqtt.session if link is not None else None
        if session is not None and session.subscription_qos(topic) is not None:
            self._send(event.device_id, topic, body, QoS.AT_LEAST_ONCE)
