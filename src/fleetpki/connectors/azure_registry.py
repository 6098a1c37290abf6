"""An IoT hub's device registry through its service REST API (ref §3, api-version 2021-04-12).

The calls are those of the azure-iot-hub SDK's ``IoTHubRegistryManager`` (GET and PUT
``/devices/{id}`` with ``If-Match``), made with httpx so that the same client takes
either credential Azure accepts there: a SAS token signed with a connection string's
key (ref §3.1) or a Microsoft Entra bearer token for ``https://iothubs.azure.net``.
Refusals become :class:`ConnectorError` naming what the credential lacks.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError, ClientAuthenticationError

from fleetpki.connectors.azure_config import ConnectionString
from fleetpki.connectors.connector import ConnectorError

__all__ = [
    "REGISTRY_ROLE",
    "SERVICE_API_VERSION",
    "RegistryClient",
    "retry_after",
    "sas_token",
]

#: The service API version the azure-iot-hub SDK 2.7 sends (ref §3.2).
SERVICE_API_VERSION = "2021-04-12"
#: The Azure built-in role that lets an Entra principal create and change devices.
REGISTRY_ROLE = "IoT Hub Registry Contributor"
_SAS_TTL = 3600
_log = logging.getLogger(__name__)


def sas_token(connection: ConnectionString, *, now: float | None = None) -> str:
    """A service SAS token as the Azure SDK computes it (ref §3.1).

    HMAC-SHA256, keyed with the base64-decoded key, over the encoded ``sr``, a newline
    and the expiry.
    """
    expiry = int((time.time() if now is None else now) + _SAS_TTL)
    sr = quote_plus(connection.host_name)
    digest = hmac.new(
        base64.b64decode(connection.key), f"{sr}\n{expiry}".encode(), hashlib.sha256
    ).digest()
    sig = quote(base64.b64encode(digest).decode(), safe="/")
    return f"SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn={connection.key_name}"


def retry_after(headers: httpx.Headers | Any) -> float | None:
    """Seconds from a ``Retry-After`` header (RFC 9110 §10.2.3: delay or HTTP date)."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    value = str(value).strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _azure_message(response: httpx.Response) -> str:
    """The message of Azure's service-API error body (ref §3.5), short and secret-free."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    text = body.get("Message") if isinstance(body, dict) else None
    if isinstance(text, str):
        try:
            inner = json.loads(text)
        except ValueError:
            return text[:300]
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])[:300]
        return text[:300]
    return response.reason_phrase


class RegistryClient:
    """The hub's device registry, one HTTP request per call.

    Args:
        service_url: returns the service API's base URL (``https://host[:port]``),
            resolved when first needed (the hub resource may have to be read first).
        connection: a connection string's policy and key (SAS), or ``None``.
        credential: the Entra credential for bearer tokens when there is no
            connection string.
        scope: the bearer token's scope.
        hub_name: the hub's name, for messages.
        ca_bundle: a CA bundle the TLS connection trusts instead of the system's.
        timeout: seconds to connect or wait for an answer.
    """

    def __init__(
        self,
        service_url: Callable[[], str],
        *,
        connection: ConnectionString | None,
        credential: TokenCredential | None,
        scope: str,
        hub_name: str,
        ca_bundle: str | None,
        timeout: float,
    ) -> None:
        if connection is None and credential is None:
            raise ConnectorError(
                "link.credential_missing",
                "the device registry needs an Azure credential or an IoT Hub connection string",
            )
        self._service_url = service_url
        self._connection = connection
        self._credential = credential
        self._scope = scope
        self._hub = hub_name
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
        )
        self._http = httpx.Client(verify=verify, timeout=timeout)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    # -- authentication ---------------------------------------------------------------------

    def _authorization(self) -> str:
        if self._connection is not None:
            return sas_token(self._connection)
        assert self._credential is not None
        try:
            token = self._credential.get_token(self._scope)
        except ClientAuthenticationError as exc:
            raise ConnectorError(
                "link.credential",
                f"the Azure credential could not get a token for {self._scope}: "
                f"{str(exc.message).splitlines()[0]}",
            ) from exc
        except AzureError as exc:
            raise ConnectorError(
                "link.unreachable",
                f"the Azure credential's token issuer cannot be reached: {type(exc).__name__}",
                transient=True,
            ) from exc
        return f"Bearer {token.token}"

    def _refused(self, response: httpx.Response, writing: bool) -> ConnectorError:
        message = _azure_message(response)
        if self._connection is not None:
            if response.status_code == 401:
                return ConnectorError(
                    "link.unauthorized",
                    f"hub {self._hub!r} refused the connection string's SAS token for policy "
                    f"{self._connection.key_name!r} ({message}); check its key and host name",
                )
            right = "RegistryWrite" if writing else "RegistryRead"
            return ConnectorError(
                "link.forbidden",
                f"the connection string's policy {self._connection.key_name!r} lacks the "
                f"{right} permission on hub {self._hub!r} ({message})",
            )
        role = f"'{REGISTRY_ROLE}' (or 'IoT Hub Data Contributor')"
        if response.status_code == 401:
            return ConnectorError(
                "link.unauthorized",
                f"hub {self._hub!r} refused the credential's token for its service API "
                f"({message}); the token must be for {self._scope.removesuffix('/.default')} "
                f"and the principal needs the {role} role on the hub",
            )
        return ConnectorError(
            "link.forbidden",
            f"the credential may not {'change' if writing else 'read'} devices in hub "
            f"{self._hub!r}: it needs the {role} role on the hub ({message})",
        )

    # -- requests ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        device_id: str,
        *,
        body: dict[str, Any] | None = None,
        if_match: str | None = None,
        collection: str = "devices",
    ) -> httpx.Response:
        """One request on ``/devices/{device_id}`` (or ``/twins/{device_id}`` with
        ``collection="twins"``); 200, 404, 409 and 412 are returned.

        Raises:
            ConnectorError: ``link.unreachable``, ``link.throttled``, ``link.hub_error``
                (transient); ``link.unauthorized``, ``link.forbidden``, ``link.refused``.
        """
        base = self._service_url().rstrip("/")
        headers = {"Authorization": self._authorization(), "Accept": "application/json"}
        if if_match is not None:
            # The SDK quotes the etag (ref §3.2); Azure strips the quotes.
            headers["If-Match"] = f'"{if_match}"'
        url = f"{base}/{collection}/{quote(device_id, safe='')}"
        try:
            response = self._http.request(
                method,
                url,
                params={"api-version": SERVICE_API_VERSION},
                json=body,
                headers=headers,
            )
        except httpx.TransportError as exc:
            raise ConnectorError(
                "link.unreachable",
                f"the service API of hub {self._hub!r} at {base} cannot be reached: "
                f"{type(exc).__name__}",
                transient=True,
            ) from exc
        _log.debug("%s %s -> %s", method, url, response.status_code)
        status = response.status_code
        if status in (200, 201, 204, 404, 409, 412):
            return response
        if status in (401, 403):
            raise self._refused(response, writing=method != "GET")
        if status == 429:
            raise ConnectorError(
                "link.throttled",
                f"hub {self._hub!r} is throttling its service API ({_azure_message(response)})",
                transient=True,
                retry_after=retry_after(response.headers),
            )
        if status >= 500:
            raise ConnectorError(
                "link.hub_error",
                f"hub {self._hub!r} failed ({status}: {_azure_message(response)})",
                transient=True,
                retry_after=retry_after(response.headers),
            )
        raise ConnectorError(
            "link.refused",
            f"hub {self._hub!r} refused {method} of device {device_id!r} "
            f"({status}: {_azure_message(response)})",
        )

    def get(self, device_id: str) -> dict[str, Any] | None:
        """The device as the service API shows it, or ``None`` when it has none."""
        response = self.request("GET", device_id)
        if response.status_code == 404:
            return None
        return dict(response.json())

    def device_statistics(self) -> dict[str, Any]:
        """``GET /statistics/devices``: a cheap authenticated call, for health checks.

        Raises:
            ConnectorError: as :meth:`request`.
        """
        base = self._service_url().rstrip("/")
        try:
            response = self._http.get(
                f"{base}/statistics/devices",
                params={"api-version": SERVICE_API_VERSION},
                headers={"Authorization": self._authorization(), "Accept": "application/json"},
            )
        except httpx.TransportError as exc:
            raise ConnectorError(
                "link.unreachable",
                f"the service API of hub {self._hub!r} at {base} cannot be reached: "
                f"{type(exc).__name__}",
                transient=True,
            ) from exc
        if response.status_code in (401, 403):
            raise self._refused(response, writing=False)
        if response.status_code != 200:
            raise ConnectorError(
                "link.hub_error",
                f"hub {self._hub!r} failed ({response.status_code})",
                transient=response.status_code >= 500 or response.status_code == 429,
                retry_after=retry_after(response.headers),
            )
        return dict(response.json())
