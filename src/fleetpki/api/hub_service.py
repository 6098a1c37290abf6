"""Azure IoT Hub's service REST API (api-version 2021-04-12) for the built-in hub (ref §3).

The routes only translate: SAS authentication (§3.1) or a bearer token for
``https://iothubs.azure.net`` (Microsoft Entra style, checked against the configured
OIDC issuer and fleetpki's own token endpoint), Azure's JSON shapes and dates
with a ``T`` (§3.2), ``If-Match`` (§3.3), direct methods (§3.4) and Azure's error
bodies with the ``iothub-errorcode`` header (§3.5). Each calls one method of the
application's hub services (``fleet.hub_devices``, ``hub_twins``, ``hub_statistics``,
``hub_sas``, ``hub_methods``), which own the decisions and the transactions.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar, cast

import jwt
from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetpki.api.azure_schemas import (
    DEVICE_BODY,
    METHOD_BODY,
    QUERY_BODY,
    TWIN_BODY,
    json_body,
)
from fleetpki.api.deps import get_fleet
from fleetpki.api.oidc import OIDCVerifier
from fleetpki.api.params import parse_counter
from fleetpki.api.problems import INTERNAL_ERROR, http_error, report_server_error
from fleetpki.application import FleetPKI
from fleetpki.errors import (
    AuthenticationError,
    FleetPKIError,
    PermissionDenied,
    ValidationError,
    http_status_for,
)
from fleetpki.services import hub_sas
from fleetpki.services.hub_devices import AuthType, DeviceSpec, DeviceStatus, HubDeviceView
from fleetpki.services.hub_management import (
    ApiTokenSecret,
    BearerIdentity,
    ManagementCredential,
)
from fleetpki.services.hub_methods import DEFAULT_METHOD_TIMEOUT
from fleetpki.services.hub_sas import IOTHUB_AUDIENCES, Right, SasCaller
from fleetpki.services.hub_twins import TwinView
from fleetpki.services.principals import TOKEN_PREFIX

__all__ = [
    "API_VERSION",
    "AzureError",
    "azure_error_response",
    "device_json",
    "router",
    "twin_json",
]

#: The service API version the azure-iot-hub SDK 2.7.0 sends (ref §3.2).
API_VERSION = "2021-04-12"

_NO_TIME = "0001-01-01T00:00:00Z"  # Azure's "never" (ref §3.2)
_MAX_METHOD_TIMEOUT = 300
# Continuation tokens are offsets into the device list; none is larger than this.
_MAX_CONTINUATION = 10**12

# Stable code -> (Azure error name, Azure numeric code) (ref §3.5).
_AZURE_ERRORS: dict[str, tuple[str, int]] = {
    "hub.device_not_found": ("DeviceNotFound", 404001),
    "hub.device_exists": ("DeviceAlreadyExists", 409001),
    "precondition.failed": ("PreconditionFailed", 412002),
    "hub.device_not_online": ("DeviceNotOnline", 404103),
    "hub.method_timeout": ("GatewayTimeout", 504101),
    "hub.bad_api_version": ("InvalidProtocolVersion", 400001),
    "request.too_large": ("MessageTooLarge", 413001),
    "internal.error": ("ServerError", 500001),
}
_CLASS_ERRORS: dict[type[FleetPKIError], tuple[str, int]] = {
    AuthenticationError: ("IotHubUnauthorizedAccess", 401002),
    PermissionDenied: ("IotHubUnauthorizedAccess", 401002),
    ValidationError: ("ArgumentInvalid", 400004),
}
# For errors with neither a code nor a class entry: by HTTP status (names UNCONFIRMED).
_STATUS_ERRORS: dict[int, tuple[str, int]] = {
    400: ("ArgumentInvalid", 400004),
    404: ("NotFound", 404000),
    405: ("MethodNotAllowed", 405000),
    409: ("Conflict", 409000),
    412: ("PreconditionFailed", 412000),
    413: ("MessageTooLarge", 413001),
    415: ("UnsupportedMediaType", 415000),
    # The SDKs retry a 503 by its status; ServiceUnavailable is 503000 in the .NET SDK's
    # ErrorCode enum.
    503: ("ServiceUnavailable", 503000),
}
_log = logging.getLogger("fleetpki.api")


def _iso(value: dt.datetime | None) -> str:
    if value is None:
        return _NO_TIME
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AzureError(Exception):
    """A FleetPKIError to be rendered as Azure renders errors (ref §3.5)."""

    def __init__(self, error: FleetPKIError) -> None:
        super().__init__(error.message)
        self.error = error


def azure_error_response(error: FleetPKIError, *, tracking_id: str | None = None) -> JSONResponse:
    """Azure's error body and ``iothub-errorcode`` header for ``error`` (ref §3.5).

    Args:
        error: the refusal; its code picks Azure's error name and number.
        tracking_id: the ``trackingId`` to send (the one logged for an unexpected
            error); a new one by default.
    """
    status = http_status_for(error)
    name, number = (
        _AZURE_ERRORS.get(error.code)
        or _STATUS_ERRORS.get(status)
        or next(
            (v for k, v in _CLASS_ERRORS.items() if isinstance(error, k)),
            ("ServerError", 500001),
        )
    )
    tracking = tracking_id or uuid.uuid4().hex
    now = _iso(dt.datetime.now(dt.UTC))
    inner = {
        "errorCode": number,
        "trackingId": tracking,
        "message": error.message,
        "info": {"fleetpkiCode": error.code},
        "timestampUtc": now,
    }
    return JSONResponse(
        {
            "Message": json.dumps(inner),
            "ExceptionMessage": f"Tracking ID:{tracking}-TimeStamp:{now}",
        },
        status_code=status,
        headers={"iothub-errorcode": name},
    )


_T = TypeVar("_T")


def _verifiers(request: Request) -> list[OIDCVerifier]:
    """OIDC verifiers for service-API tokens: the configured issuer and fleetpki's own.

    Built once per application (kept on ``app.state``) with the IoT Hub audiences.
    """
    cached = getattr(request.app.state, "iothub_verifiers", None)
    if cached is not None:
        return cast(list[OIDCVerifier], cached)
    fleet = get_fleet(request)
    settings = fleet.settings
    audiences = ",".join(IOTHUB_AUDIENCES)
    verifiers: list[OIDCVerifier] = []
    if settings.oidc_issuer and settings.oidc_jwks:
        verifiers.append(OIDCVerifier(settings.oidc_issuer, audiences, settings.oidc_jwks))
    issuer = fleet.token_issuer
    if issuer.enabled:
        verifiers.append(OIDCVerifier(issuer.issuer, audiences, str(issuer.jwks_path)))
    request.app.state.iothub_verifiers = verifiers
    return verifiers


def _bearer_credential(request: Request, token: str) -> ManagementCredential:
    """The caller a bearer token names: a fleetpki API token, or a verified OIDC JWT.

    The JWT's signature, issuer and audience are checked here, where the OIDC keys are
    (the keys may be fetched: before any unit of work); what the principal may do is
    the service's rule.
    """
    if token.startswith(TOKEN_PREFIX):
        return ApiTokenSecret(token)
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise AuthenticationError("auth.bad_token", "the bearer token is not a JWT") from exc
    issuer = unverified.get("iss")
    verifier = next((v for v in _verifiers(request) if v.issuer == issuer), None)
    if verifier is None:
        raise AuthenticationError(
            "hub.token_issuer",
            f"the bearer token is from an issuer this hub does not trust: {issuer!r}",
        )
    try:
        identity = verifier.verify(token)
    except AuthenticationError as exc:
        if isinstance(exc.__cause__, jwt.InvalidAudienceError):
            raise AuthenticationError(
                "hub.token_audience",
                f"the bearer token is for the audience {unverified.get('aud')!r}; the hub's "
                f"service API takes tokens for {IOTHUB_AUDIENCES[0]!r}",
            ) from exc
        raise
    return BearerIdentity(identity.principal_id, identity.display_name)


def _sas_caller(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    api_version: Annotated[str | None, Query(alias="api-version")] = None,
) -> SasCaller:
    fleet = get_fleet(request)
    if not api_version:
        raise AzureError(ValidationError("hub.bad_api_version", "the api-version is missing"))
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        credential = _call(_bearer_credential, request, token.strip())
        return _call(fleet.hub_sas.authenticate_bearer, credential)
    return _call(fleet.hub_sas.authenticate, authorization)


Caller = Annotated[SasCaller, Depends(_sas_caller)]
Fleet = Annotated[FleetPKI, Depends(get_fleet)]
IfMatch = Annotated[str | None, Header(alias="If-Match")]
JsonBody = Annotated[dict[str, Any], Body()]


class _AzureRoute(APIRoute):
    """A route whose refusals are rendered as Azure renders them, not as problem+json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except AzureError as exc:
                return _rendered(request, exc.error)
            except FleetPKIError as exc:
                return _rendered(request, exc)
            except RequestValidationError as exc:
                return azure_error_response(
                    ValidationError("hub.bad_request", f"the request is invalid: {_where(exc)}")
                )
            except StarletteHTTPException as exc:
                # FastAPI's own refusals (a body that is not JSON, ...), in Azure's form.
                detail = exc.detail if isinstance(exc.detail, str) else "request refused"
                return azure_error_response(http_error(exc.status_code, detail))
            except Exception as exc:
                # One log entry, with the tracking id the caller sees (ref §3.5); the
                # connection stays usable because nothing propagates to the server.
                tracking = report_server_error(request.method, request.url.path, exc)
                return azure_error_response(INTERNAL_ERROR, tracking_id=tracking)

        return handle


def _rendered(request: Request, error: FleetPKIError) -> Response:
    """A refusal in Azure's format; one of 5xx is logged once with its tracking id."""
    if http_status_for(error) >= 500:
        tracking = report_server_error(request.method, request.url.path, error)
        return azure_error_response(error, tracking_id=tracking)
    return azure_error_response(error)


def _where(exc: RequestValidationError) -> str:
    # Locations only: the offending value may hold a secret and is never echoed.
    places = [".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()[:5]]
    return ", ".join(places) or "request"


router = APIRouter(tags=["hub service (Azure IoT Hub)"], route_class=_AzureRoute)


def _guard(caller: SasCaller, *rights: Right) -> None:
    try:
        hub_sas.require_right(caller, *rights)
    except FleetPKIError as exc:
        raise AzureError(exc) from exc


def device_json(device: HubDeviceView) -> dict[str, Any]:
    """A registry entry in Azure's Device shape (ref §3.2 "Device fields")."""
    return {
        "deviceId": device.device_id,
        "generationId": device.generation_id,
        "etag": device.etag,
        "connectionState": device.connection_state,
        "status": device.status,
        "statusReason": device.status_reason,
        "connectionStateUpdatedTime": _iso(device.connection_state_updated_at),
        "statusUpdatedTime": _iso(device.status_updated_at),
        "lastActivityTime": _iso(device.last_activity_at),
        "cloudToDeviceMessageCount": device.c2d_count,
        "authentication": {
            # Azure returns a sas device's keys to registry readers (ref §3.2).
            "symmetricKey": {
                "primaryKey": device.primary_key,
                "secondaryKey": device.secondary_key,
            },
            "x509Thumbprint": {
                "primaryThumbprint": device.primary_thumbprint,
                "secondaryThumbprint": device.secondary_thumbprint,
            },
            "type": device.auth_type,
        },
        "capabilities": {"iotEdge": False},
    }


def twin_json(twin: TwinView) -> dict[str, Any]:
    """A device's twin in Azure's Twin shape (ref §3.2 "Twin fields")."""
    device = twin.device
    return {
        "deviceId": device.device_id,
        "etag": twin.etag,
        "deviceEtag": device.etag,
        "version": twin.desired_version + twin.reported_version,
        "status": device.status,
        "statusReason": device.status_reason,
        "statusUpdateTime": _iso(device.status_updated_at),
        "connectionState": device.connection_state,
        "lastActivityTime": _iso(device.last_activity_at),
        "cloudToDeviceMessageCount": device.c2d_count,
        "authenticationType": device.auth_type,
        "x509Thumbprint": {
            "primaryThumbprint": device.primary_thumbprint,
            "secondaryThumbprint": device.secondary_thumbprint,
        },
        "capabilities": {"iotEdge": False},
        "tags": twin.tags,
        "properties": {
            "desired": {**twin.desired, "$version": twin.desired_version},
            "reported": {**twin.reported, "$version": twin.reported_version},
        },
    }


def _text(document: dict[str, Any], key: str, where: str, max_length: int) -> str | None:
    """A string field of Azure's JSON, or ``None`` when absent or null; anything else refused."""
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError("hub.bad_request", f"{where}{key} must be a string or null")
    if len(value) > max_length:
        raise ValidationError(
            "hub.bad_request", f"{where}{key} is longer than {max_length} characters"
        )
    return value


def _object(document: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """An object field of Azure's JSON (``{}`` when absent or null); anything else refused."""
    value = document.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError("hub.bad_request", f"{where}{key} must be an object")
    return value


def _spec_from(device_id: str, body: dict[str, Any]) -> DeviceSpec:
    if _text(body, "deviceId", "", 128) not in (None, device_id):
        raise ValidationError("hub.bad_device_id", "the body's deviceId is not the URL's")
    auth = _object(body, "authentication", "")
    thumbs = _object(auth, "x509Thumbprint", "authentication.")
    keys = _object(auth, "symmetricKey", "authentication.")
    status = _text(body, "status", "", 32)
    return DeviceSpec(
        device_id=device_id,
        auth_type=AuthType.parse(
            _text(auth, "type", "authentication.", 64) or "certificateAuthority"
        ),
        primary_thumbprint=_text(
            thumbs, "primaryThumbprint", "authentication.x509Thumbprint.", 128
        ),
        secondary_thumbprint=_text(
            thumbs, "secondaryThumbprint", "authentication.x509Thumbprint.", 128
        ),
        primary_key=_text(keys, "primaryKey", "authentication.symmetricKey.", 128),
        secondary_key=_text(keys, "secondaryKey", "authentication.symmetricKey.", 128),
        status=DeviceStatus.parse(status) if status else DeviceStatus.ENABLED,
        status_reason=_text(body, "statusReason", "", 1024),
    )


def _call(use_case: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run one service call; fleetpki errors become Azure errors."""
    try:
        return use_case(*args, **kwargs)
    except FleetPKIError as exc:
        raise AzureError(exc) from exc


# --------------------------------------------------------------------------- devices


@router.put("/devices/{device_id}", openapi_extra=json_body(DEVICE_BODY))
def put_device(
    device_id: str, body: JsonBody, caller: Caller, fleet: Fleet, if_match: IfMatch = None
) -> dict[str, Any]:
    """Create (200, not 201: ref §3.2) or update a device identity.

    A sas device's keys are generated when the body names none; an update that names
    keys replaces them (key rotation), one that names none keeps them.
    """
    _guard(caller, Right.REGISTRY_WRITE)
    spec = _call(_spec_from, device_id, body)
    device, _ = _call(fleet.hub_devices.put, spec, if_match=if_match)
    return device_json(device)


@router.get("/devices/{device_id}")
def get_device(device_id: str, caller: Caller, fleet: Fleet) -> dict[str, Any]:
    """One device identity."""
    _guard(caller, Right.REGISTRY_READ)
    return device_json(_call(fleet.hub_devices.get, device_id))


@router.delete("/devices/{device_id}", status_code=204)
def delete_device(
    device_id: str, caller: Caller, fleet: Fleet, if_match: IfMatch = None
) -> Response:
    """Delete a device (204, ref §3.2); its live session is closed."""
    _guard(caller, Right.REGISTRY_WRITE)
    _call(fleet.hub_devices.delete, device_id, if_match=if_match)
    return Response(status_code=204)


@router.get("/devices")
def list_devices(
    caller: Caller, fleet: Fleet, top: Annotated[int | None, Query(ge=1, le=1000)] = None
) -> list[dict[str, Any]]:
    """Device identities, at most ``top``."""
    _guard(caller, Right.REGISTRY_READ)
    return [device_json(d) for d in _call(fleet.hub_devices.list, limit=top)]


_SELECT_ALL = re.compile(r"^\s*select\s+\*\s+from\s+devices\s*$", re.IGNORECASE)


@router.post("/devices/query", openapi_extra=json_body(QUERY_BODY))
def query_devices(
    body: JsonBody,
    caller: Caller,
    fleet: Fleet,
    max_items: Annotated[int | None, Header(alias="x-ms-max-item-count", ge=1, le=1000)] = None,
    continuation: Annotated[
        str | None, Header(alias="x-ms-continuation", pattern=r"^[0-9]{1,12}$")
    ] = None,
) -> Response:
    """``SELECT * FROM devices`` only, paged by ``x-ms-max-item-count`` (ref §3.2)."""
    _guard(caller, Right.REGISTRY_READ, Right.SERVICE_CONNECT)
    query = body.get("query", "")
    if not isinstance(query, str) or not _SELECT_ALL.match(query):
        raise AzureError(
            ValidationError("hub.bad_query", "only SELECT * FROM devices is supported")
        )
    start = 0
    if continuation:
        # The token is one this hub sent: ASCII digits (str.isdigit takes "²" too).
        parsed = parse_counter(continuation, maximum=_MAX_CONTINUATION)
        if parsed is None:
            raise AzureError(
                ValidationError("hub.bad_continuation", "the x-ms-continuation token is invalid")
            )
        start = parsed
    size = max_items or 100
    twins = [twin_json(t) for t in _call(fleet.hub_twins.list)]
    page = twins[start : start + size]
    headers = {"x-ms-item-type": "Twin"}
    if start + size < len(twins):
        headers["x-ms-continuation"] = str(start + size)
    return JSONResponse(page, headers=headers)


# --------------------------------------------------------------------------- twins


@router.get("/twins/{device_id}")
def get_twin(device_id: str, caller: Caller, fleet: Fleet) -> dict[str, Any]:
    """A device twin."""
    _guard(caller, Right.REGISTRY_READ, Right.SERVICE_CONNECT)
    return twin_json(_call(fleet.hub_twins.get, device_id))


@router.patch("/twins/{device_id}", openapi_extra=json_body(TWIN_BODY))
def patch_twin(
    device_id: str, body: JsonBody, caller: Caller, fleet: Fleet, if_match: IfMatch = None
) -> dict[str, Any]:
    """Merge tags and desired properties (ref §3.3)."""
    _guard(caller, Right.REGISTRY_WRITE, Right.SERVICE_CONNECT)
    return twin_json(_call(fleet.hub_twins.patch, device_id, body, if_match=if_match))


@router.put("/twins/{device_id}", openapi_extra=json_body(TWIN_BODY))
def replace_twin(
    device_id: str, body: JsonBody, caller: Caller, fleet: Fleet, if_match: IfMatch = None
) -> dict[str, Any]:
    """Replace tags and desired properties (ref §3.3)."""
    _guard(caller, Right.REGISTRY_WRITE, Right.SERVICE_CONNECT)
    return twin_json(_call(fleet.hub_twins.replace, device_id, body, if_match=if_match))


@router.post("/twins/{device_id}/methods", openapi_extra=json_body(METHOD_BODY))
async def invoke_method(
    device_id: str, body: JsonBody, caller: Caller, fleet: Fleet
) -> dict[str, Any]:
    """Invoke a direct method and return ``{"status", "payload"}`` (ref §3.4)."""
    _guard(caller, Right.SERVICE_CONNECT)
    method = body.get("methodName")
    if not isinstance(method, str) or not method:
        raise AzureError(ValidationError("hub.bad_method", "methodName is required"))
    raw_timeout = body.get("responseTimeoutInSeconds")
    if raw_timeout is None:
        raw_timeout = DEFAULT_METHOD_TIMEOUT
    # bool is an int to Python; true is not a number of seconds.
    if (
        isinstance(raw_timeout, bool)
        or not isinstance(raw_timeout, int | float)
        or (isinstance(raw_timeout, float) and not math.isfinite(raw_timeout))
    ):
        raise AzureError(ValidationError("hub.bad_method", "responseTimeoutInSeconds is a number"))
    timeout = float(min(max(raw_timeout, 1), _MAX_METHOD_TIMEOUT))
    try:
        result = await fleet.hub_methods.invoke(device_id, method, body.get("payload"), timeout)
    except FleetPKIError as exc:
        raise AzureError(exc) from exc
    return {"status": result.status, "payload": result.payload}


# --------------------------------------------------------------------------- statistics


@router.get("/statistics/devices")
def registry_statistics(caller: Caller, fleet: Fleet) -> dict[str, int]:
    """Device counts (ref §3.2)."""
    _guard(caller, Right.REGISTRY_READ)
    stats = _call(fleet.hub_statistics.devices)
    return {
        "totalDeviceCount": stats.total,
        "enabledDeviceCount": stats.enabled,
        "disabledDeviceCount": stats.disabled,
    }


@router.get("/statistics/service")
def service_statistics(caller: Caller, fleet: Fleet) -> dict[str, int]:
    """Connected devices: the live hub's count when one runs here, else the registry's."""
    _guard(caller, Right.SERVICE_CONNECT, Right.REGISTRY_READ)
    return {"connectedDeviceCount": _call(fleet.hub_statistics.connected_devices)}
