"""Azure DPS's HTTPS APIs on the API port: device registration and the enrollment service API.

Two route families, both answering in DPS's error body (``errorCode``, ``trackingId``,
``message``, ``timestampUtc``, and fleetpki's stable ``code``):

* The runtime registration API (learn.microsoft.com/rest/api/iot-dps/device/runtime-
  registration), authenticated by the TLS client certificate:
  ``PUT /{idScope}/registrations/{registrationId}/register`` answers 202 with the
  operation (``assigning``), and
  ``GET /{idScope}/registrations/{registrationId}/operations/{operationId}`` its outcome.
  A throttled registration is 429 with ``Retry-After``. Each calls one method of
  ``fleet.provisioning`` (`fleetpki.services.provisioning.ProvisioningService`).
* The service API's enrollments (learn.microsoft.com/rest/api/iot-dps/service/
  enrollment-group and .../individual-enrollment), for admins with a fleetpki API token
  or OIDC token: ``PUT|GET|DELETE /enrollmentGroups/{id}``, ``POST
  /enrollmentGroups/query``, the same under ``/enrollments``, and ``GET
  /registrations/{id}`` (a registration's state). X.509 attestation only: a group by
  ``caReferences.primary`` (a hub CA's name), an individual enrollment by
  ``clientCertificates.primary.certificate``. Each calls one method of
  ``fleet.provisioning_enrollments``.

The TLS layer of the API port verifies client certificates against fleetpki's CAs
(`fleetpki.api.tls`), so a device of a foreign CA registers over MQTT, where the hub
accepts any certificate at the TLS layer and the policy decides.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetpki.api.auth import Caller, require_admin
from fleetpki.api.deps import client_source, get_fleet
from fleetpki.api.problems import INTERNAL_ERROR, count_refusal, http_error, report_server_error
from fleetpki.api.tls import CLIENT_CERT_STATE_KEY, CLIENT_CHAIN_STATE_KEY
from fleetpki.errors import FleetPKIError, ThrottledError, ValidationError, http_status_for
from fleetpki.hub.azure.dps import dps_error_body, parse_register_body, utc_text
from fleetpki.services.provisioning_enrollments import (
    AllocationPolicy,
    EnrollmentKind,
    EnrollmentSpec,
    EnrollmentView,
    ReprovisionPolicy,
)
from fleetpki.services.provisioning_requests import (
    DeviceCredentials,
    RegistrationRequest,
    StatusRequest,
)

__all__ = [
    "dps_error_response",
    "enrollment_json",
    "enrollment_spec",
    "is_dps_path",
    "router",
]

#: The service API's first path segments (the runtime API's second is ``registrations``).
_SERVICE_ROOTS = frozenset({"enrollmentGroups", "enrollments", "registrations"})


def is_dps_path(path: str) -> bool:
    """Whether ``path`` belongs to the provisioning service's HTTPS APIs."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "":
        return False
    return parts[1] in _SERVICE_ROOTS or (len(parts) >= 4 and parts[2] == "registrations")


def dps_error_response(error: FleetPKIError, *, tracking_id: str | None = None) -> JSONResponse:
    """DPS's error body for ``error``, with ``Retry-After`` on a throttled request."""
    status = http_status_for(error)
    body = dps_error_body(
        status,
        error.message,
        tracking_id=tracking_id or uuid.uuid4().hex,
        now=dt.datetime.now(dt.UTC),
        code=error.code,
    )
    headers = {}
    if isinstance(error, ThrottledError):
        headers["Retry-After"] = str(error.retry_after)
    return JSONResponse(body, status_code=status, headers=headers)


class _DpsRoute(APIRoute):
    """A route whose refusals are DPS's error body, never problem+json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except FleetPKIError as exc:
                count_refusal(request.app, exc.code)
                if http_status_for(exc) >= 500:
                    tracking = report_server_error(request.method, request.url.path, exc)
                    return dps_error_response(exc, tracking_id=tracking)
                return dps_error_response(exc)
            except RequestValidationError as exc:
                places = [".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()[:5]]
                error = ValidationError(
                    "provisioning.bad_request",
                    f"the request is invalid: {', '.join(places) or 'request'}",
                )
                count_refusal(request.app, error.code)
                return dps_error_response(error)
            except StarletteHTTPException as exc:
                detail = exc.detail if isinstance(exc.detail, str) else "request refused"
                return dps_error_response(http_error(exc.status_code, detail))
            except Exception as exc:
                tracking = report_server_error(request.method, request.url.path, exc)
                return dps_error_response(INTERNAL_ERROR, tracking_id=tracking)

        return handle


router = APIRouter(tags=["provisioning (Azure DPS)"], route_class=_DpsRoute)
ApiVersion = Annotated[str | None, Query(alias="api-version", max_length=32)]
IfMatch = Annotated[str | None, Header(alias="If-Match", max_length=256)]
AdminDep = Annotated[Caller, Depends(require_admin)]


def _require_api_version(api_version: str | None) -> None:
    if not api_version:
        raise ValidationError("provisioning.bad_api_version", "the api-version is missing")


def _credentials(request: Request) -> DeviceCredentials:
    state: dict[str, Any] = request.scope.get("state") or {}
    leaf = state.get(CLIENT_CERT_STATE_KEY)
    chain = state.get(CLIENT_CHAIN_STATE_KEY) or ()
    if not isinstance(leaf, bytes):
        return DeviceCredentials(None)
    return DeviceCredentials(leaf, tuple(der for der in chain if isinstance(der, bytes)))


# --------------------------------------------------------------------------- runtime API


@router.put("/{id_scope}/registrations/{registration_id}/register", status_code=202)
async def register_device(
    id_scope: str, registration_id: str, request: Request, api_version: ApiVersion = None
) -> JSONResponse:
    """Register the device whose TLS client certificate this is (DPS's RegisterDevice)."""
    _require_api_version(api_version)
    body_id, payload = parse_register_body(await request.body())
    fleet = get_fleet(request)
    operation = await run_in_threadpool(
        fleet.provisioning.register,
        RegistrationRequest(
            id_scope,
            registration_id,
            _credentials(request),
            body_registration_id=body_id,
            payload=payload,
            source=client_source(request),
        ),
    )
    headers = {"Retry-After": str(operation.retry_after)} if operation.retry_after else {}
    return JSONResponse(operation.assigning().to_json(), status_code=202, headers=headers)


@router.get("/{id_scope}/registrations/{registration_id}/operations/{operation_id}")
def operation_status(
    id_scope: str,
    registration_id: str,
    operation_id: str,
    request: Request,
    api_version: ApiVersion = None,
) -> JSONResponse:
    """A registration operation's status (DPS's OperationStatusLookup)."""
    _require_api_version(api_version)
    operation = get_fleet(request).provisioning.operation_status(
        StatusRequest(id_scope, registration_id, operation_id, _credentials(request))
    )
    return JSONResponse(operation.to_json())


# --------------------------------------------------------------------------- service API


def enrollment_json(view: EnrollmentView) -> dict[str, Any]:
    """An enrollment in DPS's EnrollmentGroup or IndividualEnrollment shape."""
    body: dict[str, Any] = {}
    if view.kind is EnrollmentKind.GROUP:
        body["enrollmentGroupId"] = view.name
        x509: dict[str, Any] = {"caReferences": {"primary": view.ca_name}}
    else:
        body["registrationId"] = view.name
        body["deviceId"] = view.name
        certificate: dict[str, Any] = {
            "sha1Thumbprint": view.certificate_sha1,
            "sha256Thumbprint": view.certificate_sha256,
        }
        x509 = {"clientCertificates": {"primary": {"info": certificate}}}
    body |= {
        "attestation": {"type": "x509", "x509": x509},
        "capabilities": {"iotEdge": False},
        "iotHubHostName": view.hubs[0] if view.hubs else None,
        "iotHubs": list(view.hubs),
        "allocationPolicy": view.allocation.value,
        "initialTwin": dict(view.initial_twin),
        "reprovisionPolicy": {
            "updateHubAssignment": view.reprovision.update_hub_assignment,
            "migrateDeviceData": view.reprovision.migrate_device_data,
        },
        "provisioningStatus": "enabled" if view.enabled else "disabled",
        "etag": view.etag,
        "createdDateTimeUtc": utc_text(view.created_at),
        "lastUpdatedDateTimeUtc": utc_text(view.updated_at),
    }
    return body


def _bad(message: str) -> ValidationError:
    return ValidationError("provisioning.bad_enrollment", message)


def _object(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _bad(f"{key} must be a JSON object")
    return value


def _flag(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise _bad(f"{key} must be true or false")
    return value


def _certificate(text: Any) -> bytes:
    """An individual enrollment's certificate: PEM, or base64 of DER or of PEM (Azure's)."""
    if not isinstance(text, str) or not text.strip():
        raise _bad("attestation.x509.clientCertificates.primary.certificate must be a string")
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("the certificate is neither PEM nor base64") from None


def enrollment_spec(kind: EnrollmentKind, name: str, body: Mapping[str, Any]) -> EnrollmentSpec:
    """The spec an EnrollmentGroup or IndividualEnrollment body (for ``name``) asks for.

    Raises:
        ValidationError: ``provisioning.bad_enrollment`` (a field of the wrong type, an
            id other than the path's, an attestation other than X.509);
            ``provisioning.bad_allocation`` (``geoLatency``, ``custom``).
    """
    if not isinstance(body, Mapping):
        raise _bad("the enrollment must be a JSON object")
    id_field = "enrollmentGroupId" if kind is EnrollmentKind.GROUP else "registrationId"
    if body.get(id_field) not in (None, name):
        raise _bad(f"{id_field} is not the id of the path")
    attestation = _object(body, "attestation")
    if attestation.get("type", "x509") != "x509":
        raise _bad("only X.509 attestation is served (not TPM or symmetric keys)")
    x509 = _object(attestation, "x509")
    ca: str | None = None
    certificate: bytes | None = None
    if kind is EnrollmentKind.GROUP:
        primary = _object(x509, "caReferences").get("primary")
        if not isinstance(primary, str) or not primary:
            raise _bad(
                "an enrollment group names its hub CA in attestation.x509.caReferences.primary "
                "(signingCertificates are not served)"
            )
        ca = primary
    else:
        primary_cert = _object(_object(x509, "clientCertificates"), "primary")
        certificate = _certificate(primary_cert.get("certificate"))
    hubs_field = body.get("iotHubs")
    if hubs_field is None:
        hubs_field = []
    if not isinstance(hubs_field, list) or not all(isinstance(h, str) for h in hubs_field):
        raise _bad("iotHubs must be a list of host names")
    single = body.get("iotHubHostName")
    if single is not None and not isinstance(single, str):
        raise _bad("iotHubHostName must be a host name")
    hubs = tuple(hubs_field) or ((single,) if single else ())
    allocation_text = body.get("allocationPolicy")
    if allocation_text is None:
        allocation = AllocationPolicy.HASHED if len(hubs) > 1 else AllocationPolicy.STATIC
    elif isinstance(allocation_text, str):
        allocation = AllocationPolicy.parse(allocation_text)
    else:
        raise _bad("allocationPolicy must be a string")
    status = body.get("provisioningStatus", "enabled")
    if status not in ("enabled", "disabled"):
        raise _bad("provisioningStatus is enabled or disabled")
    reprovision = _object(body, "reprovisionPolicy")
    return EnrollmentSpec(
        kind=kind,
        name=name,
        ca=ca,
        certificate=certificate,
        allocation=allocation,
        hubs=hubs,
        initial_twin=_object(body, "initialTwin"),
        enabled=status == "enabled",
        reprovision=ReprovisionPolicy(
            _flag(reprovision, "updateHubAssignment", True),
            _flag(reprovision, "migrateDeviceData", True),
        ),
    )


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _bad("the body is not JSON") from None


def _put(
    kind: EnrollmentKind,
) -> Callable[..., Coroutine[Any, Any, JSONResponse]]:
    async def put_enrollment(
        name: str,
        request: Request,
        caller: AdminDep,
        api_version: ApiVersion = None,
        if_match: IfMatch = None,
    ) -> JSONResponse:
        _require_api_version(api_version)
        spec = enrollment_spec(kind, name, await _json_body(request))
        view, _ = await run_in_threadpool(
            get_fleet(request).provisioning_enrollments.put,
            caller.actor,
            spec,
            if_match=if_match,
        )
        return JSONResponse(enrollment_json(view))

    return put_enrollment


def _get(kind: EnrollmentKind) -> Callable[..., JSONResponse]:
    def get_enrollment(
        name: str, request: Request, caller: AdminDep, api_version: ApiVersion = None
    ) -> JSONResponse:
        _require_api_version(api_version)
        view = get_fleet(request).provisioning_enrollments.get(caller.actor, kind, name)
        return JSONResponse(enrollment_json(view))

    return get_enrollment


def _delete(kind: EnrollmentKind) -> Callable[..., Response]:
    def delete_enrollment(
        name: str,
        request: Request,
        caller: AdminDep,
        api_version: ApiVersion = None,
        if_match: IfMatch = None,
    ) -> Response:
        _require_api_version(api_version)
        get_fleet(request).provisioning_enrollments.delete(
            caller.actor, kind, name, if_match=if_match
        )
        return Response(status_code=204)

    return delete_enrollment


def _query(kind: EnrollmentKind) -> Callable[..., JSONResponse]:
    def query_enrollments(
        request: Request, caller: AdminDep, api_version: ApiVersion = None
    ) -> JSONResponse:
        _require_api_version(api_version)
        views = get_fleet(request).provisioning_enrollments.list(caller.actor, kind)
        return JSONResponse([enrollment_json(v) for v in views])

    return query_enrollments


for _kind, _root in (
    (EnrollmentKind.GROUP, "enrollmentGroups"),
    (EnrollmentKind.INDIVIDUAL, "enrollments"),
):
    router.add_api_route(f"/{_root}/query", _query(_kind), methods=["POST"])
    router.add_api_route(f"/{_root}/{{name}}", _put(_kind), methods=["PUT"])
    router.add_api_route(f"/{_root}/{{name}}", _get(_kind), methods=["GET"])
    router.add_api_route(f"/{_root}/{{name}}", _delete(_kind), methods=["DELETE"], status_code=204)


@router.get("/registrations/{registration_id}")
def registration_state(
    registration_id: str, request: Request, _caller: AdminDep, api_version: ApiVersion = None
) -> JSONResponse:
    """Where a registration id was provisioned (DPS's DeviceRegistrationState Get)."""
    _require_api_version(api_version)
    state = get_fleet(request).provisioning.registration_state(registration_id)
    return JSONResponse(state.to_json())
