"""Direct methods (ref §3.4): the live hub that the service API calls, owned by the application.

The service API's ``POST /twins/{id}/methods`` needs a connected device, which only the
MQTT server knows about. The server attaches a :class:`MethodInvoker` to its
application's :class:`HubMethodService` (``fleet.hub_methods.attach``) while it
listens; without one every device is offline (404103). Each application has its own
service, so two applications in one process never reach each other's hub.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from fleetpki.errors import NotFoundError
from fleetpki.services.hub_devices import HubDeviceService

__all__ = [
    "DEFAULT_METHOD_TIMEOUT",
    "HubMethodService",
    "MethodInvoker",
    "MethodResult",
    "device_not_online",
]

#: Azure's default response timeout for a direct method, in seconds (ref §3.4).
DEFAULT_METHOD_TIMEOUT = 30.0


@runtime_checkable
class MethodInvoker(Protocol):
    """Calls direct methods on connected devices (the hub server implements it)."""

    async def invoke(
        self, device_id: str, method: str, payload: Any, timeout: float
    ) -> tuple[int, Any]:
        """Publish the request and wait for the device's ``(status, payload)`` answer.

        Raises:
            NotFoundError: ``hub.device_not_online`` when the device is not connected or
                not subscribed to methods (Azure 404103).
            FleetPKIError: ``hub.method_timeout`` when it does not answer in time (504101).
        """
        ...

    def connected_device_count(self) -> int:
        """Devices connected now."""
        ...

    def is_device_connected(self, device_id: str) -> bool:
        """Whether the device has a live, accepted connection now."""
        ...


@dataclass(frozen=True, slots=True)
class MethodResult:
    """A device's answer to a direct method (ref §3.4 ``{"status", "payload"}``)."""

    status: int
    payload: Any

    def as_json(self) -> dict[str, Any]:
        """The service API's body: ``{"status": n, "payload": ...}``."""
        return {"status": self.status, "payload": self.payload}


def device_not_online(device_id: str) -> NotFoundError:
    """The error for a device that cannot take a direct method now (Azure 404103)."""
    return NotFoundError("hub.device_not_online", f"device {device_id!r} is not online")


class HubMethodService:
    """Direct methods through this application's live hub, when one is attached.

    Args:
        devices: the registry, to tell an unknown device (404001) from an offline one.
    """

    def __init__(self, devices: HubDeviceService) -> None:
        self._devices = devices
        self._lock = threading.Lock()
        self._invoker: MethodInvoker | None = None

    def attach(self, invoker: MethodInvoker) -> None:
        """Make ``invoker`` this application's live hub for direct methods."""
        with self._lock:
            self._invoker = invoker

    def detach(self, invoker: MethodInvoker | None = None) -> None:
        """Forget the live hub (only ``invoker``, when given)."""
        with self._lock:
            if invoker is None or self._invoker is invoker:
                self._invoker = None

    def current(self) -> MethodInvoker | None:
        """The attached live hub, or ``None`` when no hub runs for this application."""
        with self._lock:
            return self._invoker

    async def invoke(
        self, device_id: str, method: str, payload: Any, timeout: float
    ) -> MethodResult:
        """Call ``method`` on the connected device and return its answer (ref §3.4).

        The registry is read in a worker thread (one short unit of work) and closed
        before the call goes to the device, so no transaction waits on the network.

        Raises:
            NotFoundError: ``hub.device_not_found`` (404001); ``hub.device_not_online``
                (404103) when no hub runs or the device is not connected.
            FleetPKIError: ``hub.method_timeout`` (504101).
        """
        await asyncio.to_thread(self._devices.get, device_id)
        invoker = self.current()
        if invoker is None:
            raise device_not_online(device_id)
        status, answer = await invoker.invoke(device_id, method, payload, timeout)
        return MethodResult(status, answer)
