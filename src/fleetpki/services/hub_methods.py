"""Direct methods (ref §3.4): the interface the live hub implements for the service API.

The service API's ``POST /twins/{id}/methods`` needs a connected device, which only the
MQTT server knows about. The server registers a :class:`MethodInvoker` with
:func:`attach_method_invoker` when it starts; without one every device is offline
(404103).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol, runtime_checkable

from fleetpki.errors import NotFoundError

__all__ = [
    "DEFAULT_METHOD_TIMEOUT",
    "MethodInvoker",
    "attach_method_invoker",
    "current_method_invoker",
    "detach_method_invoker",
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


_lock = threading.Lock()
_invoker: MethodInvoker | None = None


def attach_method_invoker(invoker: MethodInvoker) -> None:
    """Make ``invoker`` the process's live hub for direct methods."""
    global _invoker  # noqa: PLW0603 - one live hub per process
    with _lock:
        _invoker = invoker


def detach_method_invoker(invoker: MethodInvoker | None = None) -> None:
    """Forget the live hub (only ``invoker``, when given)."""
    global _invoker  # noqa: PLW0603 - one live hub per process
    with _lock:
        if invoker is None or _invoker is invoker:
            _invoker = None


def current_method_invoker() -> MethodInvoker | None:
    """The attached live hub, or ``None`` when no hub runs in this process."""
    with _lock:
        return _invoker


def device_not_online(device_id: str) -> NotFoundError:
    """The error for a device that cannot take a direct method now (Azure 404103)."""
    return NotFoundError("hub.device_not_online", f"device {device_id!r} is not online")
