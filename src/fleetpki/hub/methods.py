"""Direct methods (ref §1.5, §3.4): a call published to a connected device, awaiting its answer."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from fleetpki.hub.azure.topics import ClientIdentity, MethodResponse, method_request_topic
from fleetpki.hub.link import Link
from fleetpki.hub.protocol import QoS
from fleetpki.services.hub_methods import DeviceNotOnline, MethodResult, MethodTimeout

__all__ = [
    "DEFAULT_METHOD_TIMEOUT",
    "DeviceNotOnline",
    "MethodCalls",
    "MethodResult",
    "MethodTimeout",
]

#: Direct methods time out after this long by default (ref §3.4).
DEFAULT_METHOD_TIMEOUT = 30.0


class MethodCalls:
    """The direct-method calls waiting for their devices' answers, on the broker's loop."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str], asyncio.Future[MethodResult]] = {}

    async def invoke(
        self,
        link: Link | None,
        device_id: str,
        method_name: str,
        payload: Any = None,
        timeout: float = DEFAULT_METHOD_TIMEOUT,
    ) -> MethodResult:
        """Call ``method_name`` on the device connected as ``link`` and wait for its answer.

        Raises:
            DeviceNotOnline: no connection, or not subscribed to methods (404103).
            MethodTimeout: no answer within ``timeout`` seconds (504101).
        """
        rid = uuid.uuid4().hex
        topic = method_request_topic(method_name, rid)
        session = link.mqtt.session if link is not None else None
        if link is None or session is None or session.subscription_qos(topic) is None:
            raise DeviceNotOnline(device_id)
        future: asyncio.Future[MethodResult] = asyncio.get_running_loop().create_future()
        key = (device_id, rid)
        self._pending[key] = future
        try:
            # Method requests go out at QoS 0 (ref §1.5).
            link.write(link.mqtt.send_publish(topic, json.dumps(payload).encode(), QoS(0)))
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise MethodTimeout(device_id, method_name) from None
        finally:
            self._pending.pop(key, None)

    def answered(self, identity: ClientIdentity, answer: MethodResponse, body: bytes) -> None:
        """A device published a method response: complete its call (late answers are dropped)."""
        future = self._pending.get((identity.client_id, answer.rid))
        if future is None or future.done():
            return
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = body.decode("utf-8", "replace")
        future.set_result(MethodResult(answer.status, payload))
