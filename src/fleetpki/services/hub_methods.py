"""Direct methods (ref §3.4): to the device's session, here or on another hub node.

The service API's ``POST /twins/{id}/methods`` needs the device's live session, which
only the hub node holding it has. The MQTT server of this process (if one runs)
attaches a :class:`MethodInvoker` to its application's :class:`HubMethodService`
(``fleet.hub_methods.attach``) while it listens. A call for a device whose session
this invoker holds goes straight to it; any other call is relayed through the database
to the node that holds the session
(:class:`~fleetpki.services.hub_method_relay.MethodRelay`), and a device that no node
holds is offline (404103). Each application has its own service, so two applications
in one process never reach each other's hub.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from fleetpki.errors import FleetPKIError, NotFoundError
from fleetpki.services.hub_devices import HubDeviceService

__all__ = [
    "DEFAULT_METHOD_TIMEOUT",
    "DeviceNotOnline",
    "HubMethodService",
    "MethodInvoker",
    "MethodRelayer",
    "MethodResult",
    "MethodTimeout",
    "device_not_online",
]

#: Azure's default response timeout for a direct method, in seconds (ref §3.4).
DEFAULT_METHOD_TIMEOUT = 30.0


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

    def holds(self, device_id: str) -> bool:
        """Whether the device's live session is here."""
        ...

    def connected_device_count(self) -> int:
        """Devices connected now."""
        ...

    @property
    def node(self) -> str:
        """The name of the hub node this invoker is."""
        ...


class MethodRelayer(Protocol):
    """Calls a direct method on whichever other hub node holds the device
    (:class:`fleetpki.services.hub_method_relay.MethodRelay` implements it)."""

    async def call(
        self,
        device_id: str,
        method_name: str,
        payload: Any,
        timeout: float,
        *,
        exclude: str | None = None,
    ) -> MethodResult:
        """The device's answer, from the node that holds its session.

        Raises:
            DeviceNotOnline: no live node holds the device's session (404103).
            MethodTimeout: no answer in ``timeout`` seconds (504101).
        """
        ...


@dataclass(frozen=True, slots=True)
class MethodResult:
    """A device's answer to a direct method (ref §3.4 ``{"status", "payload"}``)."""

    status: int
    payload: Any

    def as_json(self) -> dict[str, Any]:
        """The service API's body: ``{"status": n, "payload": ...}``."""
        return {"status": self.status, "payload": self.payload}


def device_not_online(device_id: str) -> DeviceNotOnline:
    """The error for a device that cannot take a direct method now (Azure 404103)."""
    return DeviceNotOnline(device_id)


class HubMethodService:
    """Direct methods through this application's live hub, or relayed to the node holding
    the device.

    Args:
        devices: the registry, to tell an unknown device (404001) from an offline one.
        relay: the database relay to other hub nodes; ``None`` reaches only this process.
    """

    def __init__(self, devices: HubDeviceService, relay: MethodRelayer | None = None) -> None:
        self._devices = devices
        self._relay = relay
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
        A device whose session is not in this process is called through the relay.

        Raises:
            NotFoundError: ``hub.device_not_found`` (404001); ``hub.device_not_online``
                (404103) when no hub node holds the device's session.
            FleetPKIError: ``hub.method_timeout`` (504101).
        """
        await asyncio.to_thread(self._devices.get, device_id)
        invoker = self.current()
        if invoker is not None and (self._relay is None or invoker.holds(device_id)):
            status, answer = await invoker.invoke(device_id, method, payload, timeout)
            return MethodResult(status, answer)
        if self._relay is None:
            raise device_not_online(device_id)
        here = invoker.node if invoker is not None else None
        return await self._relay.call(device_id, method, payload, timeout, exclude=here)
