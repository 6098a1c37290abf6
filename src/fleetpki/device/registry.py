"""Registering a device in an IoT hub's identity registry through the hub's service REST API.

The tutorial registers each device with "certificate authority" authentication before it
connects: the hub then trusts any certificate for that id that chains to a verified CA.
`ServiceApiRegistry` does this as the Azure IoT Hub service SDK does
(``shared/reference/azure-iot-hub-protocol.md`` §3, cited as "ref §3.x"): a connection
string ``HostName=..;SharedAccessKeyName=..;SharedAccessKey=..``, a SAS token signed with
the policy key, and ``PUT https://{HostName}/devices/{id}?api-version=2021-04-12``. The
same code therefore registers devices in Azure IoT Hub and in fleetpki's hub.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote, quote_plus

import httpx

from fleetpki.client import error_from_response
from fleetpki.device.clock import utc_now
from fleetpki.errors import ConflictError, FleetPKIError, ValidationError

__all__ = [
    "SERVICE_API_VERSION",
    "HubConnectionString",
    "HubRegistry",
    "ServiceApiRegistry",
    "sas_token",
]

#: The service API version the SDK (azure-iot-hub 2.7) sends (ref §3.2).
SERVICE_API_VERSION = "2021-04-12"
_SAS_TTL = dt.timedelta(hours=1)


class HubRegistry(Protocol):
    """Somewhere devices are registered before they connect."""

    def register_device(self, device_id: str) -> bool:
        """Register ``device_id`` with CA authentication; ``False`` if it was there already."""
        ...


@dataclass(frozen=True, slots=True)
class HubConnectionString:
    """A hub's service connection string (ref §3.1).

    Attributes:
        host_name: ``HostName``: the hub's name, possibly with a port (``localhost:8443``).
        key_name: ``SharedAccessKeyName``: the policy (``iothubowner``, ``registryReadWrite``).
        key: ``SharedAccessKey``: the policy key, base64 (kept out of ``repr``).
    """

    host_name: str
    key_name: str
    key: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> HubConnectionString:
        """Split on ``;`` and then the first ``=``, as the SDK does.

        Raises:
            ValidationError: ``hub.bad_connection_string`` without the three parts or
            with a key that is not base64.
        """
        parts: dict[str, str] = {}
        for item in text.strip().split(";"):
            name, sep, value = item.partition("=")
            if sep:
                parts[name.strip()] = value.strip()
        try:
            parsed = cls(parts["HostName"], parts["SharedAccessKeyName"], parts["SharedAccessKey"])
            base64.b64decode(parsed.key, validate=True)
        except (KeyError, binascii.Error) as exc:
            raise ValidationError(
                "hub.bad_connection_string",
                "a hub connection string needs HostName, SharedAccessKeyName and a base64 "
                "SharedAccessKey",
            ) from exc
        return parsed


def sas_token(
    resource: str,
    key: str,
    *,
    key_name: str | None,
    expiry: dt.datetime,
) -> str:
    """A shared access signature for ``resource`` (ref §3.1).

    The HMAC-SHA256, keyed with the decoded policy key, covers the URL-encoded resource
    exactly as it appears in the token, a newline and the expiry in Unix seconds.
    """
    encoded = quote_plus(resource)
    expires = str(int(expiry.timestamp()))
    digest = hmac.new(
        base64.b64decode(key), f"{encoded}\n{expires}".encode(), hashlib.sha256
    ).digest()
    signature = quote(base64.b64encode(digest).decode(), safe="/")
    token = f"SharedAccessSignature sr={encoded}&sig={signature}&se={expires}"
    if key_name:
        token += f"&skn={quote_plus(key_name)}"
    return token


class ServiceApiRegistry:
    """Registers devices through a hub's service REST API with a SAS connection string.

    Args:
        connection_string: the hub's service connection string.
        service_url: the REST base, when not ``https://{HostName}``.
        verify: a CA bundle file, an SSL context, or ``True`` for the system's roots.
        clock: the current time, for the SAS expiry.
    """

    def __init__(
        self,
        connection_string: str | HubConnectionString,
        *,
        service_url: str | None = None,
        verify: Path | str | ssl.SSLContext | bool = True,
        timeout: float = 30.0,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.connection = (
            connection_string
            if isinstance(connection_string, HubConnectionString)
            else HubConnectionString.parse(connection_string)
        )
        base = (service_url or f"https://{self.connection.host_name}").rstrip("/")
        if isinstance(verify, str | Path):
            verify = ssl.create_default_context(cafile=str(verify))
        self._http = httpx.Client(base_url=base, verify=verify, timeout=timeout)
        self._clock = clock

    def close(self) -> None:
        """Release connections."""
        self._http.close()

    def __enter__(self) -> ServiceApiRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _headers(self) -> dict[str, str]:
        token = sas_token(
            self.connection.host_name,
            self.connection.key,
            key_name=self.connection.key_name,
            expiry=self._clock() + _SAS_TTL,
        )
        return {"Authorization": token, "Accept": "application/json"}

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(
                method,
                path,
                params={"api-version": SERVICE_API_VERSION},
                headers=self._headers(),
                **kwargs,
            )
        except httpx.HTTPError as exc:
            raise FleetPKIError(
                "hub.unreachable", f"cannot reach the hub's service API: {type(exc).__name__}"
            ) from exc
        if response.status_code == 409:
            raise ConflictError("hub.device_exists", "the device is already registered")
        if response.is_error:
            raise error_from_response(response)
        return response

    def get_device(self, device_id: str) -> dict[str, Any]:
        """``GET /devices/{id}``: the registry entry."""
        result: dict[str, Any] = self._call("GET", f"/devices/{quote(device_id, safe='')}").json()
        return result

    def register_device(self, device_id: str) -> bool:
        """``PUT /devices/{id}`` with ``certificateAuthority`` authentication (ref §3.2).

        Returns ``False`` when a device of that id already exists with CA authentication.

        Raises:
            ConflictError: ``hub.device_exists`` when it exists with other authentication.
            FleetPKIError: the hub's refusal, or ``hub.unreachable``.
        """
        body = {
            "deviceId": device_id,
            "status": "enabled",
            "authentication": {"type": "certificateAuthority"},
            "capabilities": {"iotEdge": False},
        }
        try:
            self._call("PUT", f"/devices/{quote(device_id, safe='')}", json=body)
        except ConflictError:
            existing = self.get_device(device_id)
            if existing.get("authentication", {}).get("type") != "certificateAuthority":
                raise
            return False
        return True
