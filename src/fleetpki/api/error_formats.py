"""One answer format per route family, for every error: Azure's on the Azure routes.

The Azure-compatible service API (``/devices``, ``/twins``, ``/statistics``, ref §3.5)
answers in IoT Hub's error body with the ``iothub-errorcode`` header, the management
plane (``/subscriptions/...``) in ARM's, the provisioning service's
(``/{idScope}/registrations/...``, ``/enrollmentGroups``, ``/enrollments``,
``/registrations``, `fleetpki.api.dps`) in DPS's, and everything else in
``application/problem+json``. The route classes of :mod:`fleetpki.api.hub_service` and
:mod:`fleetpki.api.arm` render what their routes raise; this module renders what
happens around the routes (no such route, a body over the limit) and is the one
boundary where an unexpected error ends: :class:`ErrorBoundaryMiddleware` logs it once,
with the request id the caller is given, and answers a 500 without internals, so the
exception never reaches the server and the connection stays usable.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetpki.api.arm import arm_error_response
from fleetpki.api.dps import dps_error_response, is_dps_path
from fleetpki.api.hub_service import azure_error_response
from fleetpki.api.problems import INTERNAL_ERROR, problem_json, report_server_error
from fleetpki.errors import FleetPKIError, http_status_for

__all__ = [
    "ErrorBoundaryMiddleware",
    "error_response",
    "is_arm_path",
    "is_dps_path",
    "is_hub_service_path",
]

# The first path segments of the hub's Azure service API (ref §3.2).
_HUB_SERVICE_ROOTS = frozenset({"devices", "twins", "statistics"})


def is_hub_service_path(path: str) -> bool:
    """Whether ``path`` belongs to the hub's Azure-compatible service API."""
    return path.split("/", 2)[1] in _HUB_SERVICE_ROOTS if path.startswith("/") else False


def is_arm_path(path: str) -> bool:
    """Whether ``path`` belongs to the Azure management plane (ARM) subset."""
    return path.startswith("/subscriptions/")


def error_response(
    path: str,
    error: FleetPKIError,
    *,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The answer to a request for ``path`` refused with ``error``, in its family's format."""
    if is_hub_service_path(path):
        response: Response = azure_error_response(error, tracking_id=request_id)
    elif is_arm_path(path):
        response = arm_error_response(error, request_id=request_id)
    elif is_dps_path(path):
        response = dps_error_response(error, tracking_id=request_id)
    else:
        return problem_json(
            path,
            http_status_for(error),
            error.code,
            error.message,
            request_id=request_id,
            headers=headers,
        )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class ErrorBoundaryMiddleware:
    """Where unexpected errors end: one log entry, one 500 in the route family's format.

    Starlette's own last-resort handler re-raises after answering, so the server logs
    the error a second time and drops the connection; here nothing propagates.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request; answer a 500 for any exception raised before the answer began."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception as exc:
            path = str(scope.get("path", ""))
            request_id = report_server_error(str(scope.get("method")), path, exc)
            if started:
                # Part of the answer is out: the server closes the connection.
                return
            response = error_response(path, INTERNAL_ERROR, request_id=request_id)
            await response(scope, receive, send)
