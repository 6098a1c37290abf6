"""Cloud-to-device messages (ref §1.6): queued messages published to a subscribed device.

A device gets its pending messages when it connects or subscribes and whenever one is
queued; each goes out at QoS 1 tagged with its message id, and is marked delivered
when the device's PUBACK comes back. A fetch asked for while one runs is run again
once it ends, so a message queued meanwhile is not missed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fleetpki.hub.azure.topics import MessageProperties, SystemProperties, c2d_topic
from fleetpki.hub.backend import C2DMessage, HubBackend
from fleetpki.hub.link import Link
from fleetpki.hub.protocol import ConnectionState

__all__ = ["C2DDelivery"]

_log = logging.getLogger("fleetpki.hub")

_C2D_SYSTEM_KEYS = {
    "$.cid": "correlation_id",
    "$.uid": "user_id",
    "$.ct": "content_type",
    "$.ce": "content_encoding",
    "$.exp": "expiry_time_utc",
}


class C2DDelivery:
    """Delivers cloud-to-device messages to live connections, on the broker's loop.

    Args:
        backend: where messages wait and are marked delivered.
        executor: the broker's thread pool (the backend may block on the database).
        live: the broker's accepted connections by client id (read only).
        spawn: runs a coroutine as a task the broker keeps.
    """

    def __init__(
        self,
        backend: HubBackend,
        executor: concurrent.futures.Executor,
        live: Mapping[str, Link],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
    ) -> None:
        self._backend = backend
        self._executor = executor
        self._live = live
        self._spawn = spawn
        self._busy: dict[str, bool] = {}

    def kick(self, client_id: str) -> None:
        """Deliver ``client_id``'s pending messages if it is connected and subscribed."""
        if client_id in self._busy:
            self._busy[client_id] = True  # fetch again when the current fetch ends
            return
        link = self._live.get(client_id)
        if link is None or link.identity is None or link.identity.module_id is not None:
            return
        session = link.mqtt.session
        probe = f"{link.identity.topic_base}/messages/devicebound/x"
        if session is None or session.subscription_qos(probe) is None:
            return
        self._busy[client_id] = False
        self._spawn(self._deliver(client_id))

    def acknowledged(self, link: Link, tag: str) -> None:
        """The device PUBACKed the message tagged ``tag``: mark it delivered (ref §1.6)."""
        if link.identity is None:
            return
        loop = asyncio.get_running_loop()
        self._spawn(
            _awaited(
                loop.run_in_executor(
                    self._executor,
                    self._backend.mark_c2d_delivered,
                    link.identity.device_id,
                    tag,
                )
            )
        )

    async def _deliver(self, client_id: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            again = True
            while again:
                self._busy[client_id] = False
                messages = await loop.run_in_executor(
                    self._executor, self._backend.pending_c2d, client_id
                )
                link = self._live.get(client_id)
                if link is None or link.mqtt.state is not ConnectionState.CONNECTED:
                    return
                session = link.mqtt.session
                assert session is not None
                inflight = {m.tag for m in session.inflight}
                for message in messages:
                    if message.message_id not in inflight:
                        topic = _topic(client_id, message)
                        link.write(
                            link.mqtt.send_publish(topic, message.payload, tag=message.message_id)
                        )
                again = self._busy.get(client_id, False)
        except Exception:
            _log.exception("hub: delivering cloud-to-device messages to %r failed", client_id)
        finally:
            self._busy.pop(client_id, None)


async def _awaited(future: asyncio.Future[None]) -> None:
    await future


def _topic(device_id: str, message: C2DMessage) -> str:
    system: dict[str, str] = {"message_id": message.message_id}
    application: dict[str, str | None] = {}
    for key, value in message.properties.items():
        attribute = _C2D_SYSTEM_KEYS.get(key)
        if attribute is not None:
            system[attribute] = value
        elif not key.startswith("$."):
            application[key] = value
    return c2d_topic(device_id, MessageProperties(SystemProperties(**system), application))
