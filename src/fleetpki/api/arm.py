"""The subset of Azure's management plane (ARM) that drives hub CA certificates (ref §4.1).

``azure-mgmt-iothub`` (``IotHubClient(credential, subscription, base_url=fleetpki)``)
manages the built-in hub through these routes exactly as it manages an Azure IoT Hub:
``iot_hub_resource.get`` and ``certificates`` (list, get, create or update with and
without ``If-Match``, delete, ``generate_verification_code``, ``verify``). The routes
only translate: the bearer token is checked here (OIDC, the audiences ARM accepts),
the path, the caller's rights and the change are one use case of
:class:`fleetpki.services.hub_management.HubManagementService`, and refusals are
rendered in Azure's two error shapes: ARM's ``{"error": {"code", "message"}}`` for
authentication and resource lookup, the IoT Hub resource provider's
``{"code", "httpStatusCode", "message"}`` for certificate operations.
Facts and sources: ``notes/azure-arm.md`` in the project notes, docs/azure-management.md.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import uuid
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, cast

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from fleetpki.api.auth import bearer_token
from fleetpki.api.azure_schemas import ARM_CERTIFICATE_BODY, ARM_VERIFY_BODY, json_body
from fleetpki.api.deps import client_source, get_fleet
from fleetpki.api.oidc import OIDCVerifier
from fleetpki.api.problems import report_server_error
from fleetpki.application import FleetPKI
from fleetpki.errors import (
    AuthenticationError,
    FleetPKIError,
    ValidationError,
    http_status_for,
)
from fleetpki.pki.names import dotnet_subject
from fleetpki.services.hub_management import (
    ARM_AUDIENCES,
    ApiTokenSecret,
    BearerIdentity,
    CertificatePut,
    HubCertificateView,
    HubIdentity,
    HubTarget,
    ManagementCredential,
)
from fleetpki.services.principals import TOKEN_PREFIX

__all__ = ["HUB_PATH", "arm_error_response", "certificate_json", "hub_json", "router"]

HUB_PATH = (
    "/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
    "/providers/Microsoft.Devices/IotHubs/{hub_name}"
)
_CERTIFICATE_TYPE = "Microsoft.Devices/IotHubs/Certificates"
# ARM's api-version format; the certificate shapes are the same in every version since
# the certificates API appeared (2017-07-01), so any well-formed version is served.
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
_RESOURCE_NOT_FOUND_HINT = " For more details please go to https://aka.ms/ARMResourceNotFoundFix"

# Errors that ARM itself answers: code -> ARM error code.
_ARM_CODES: dict[str, str] = {
    "auth.missing": "AuthenticationFailed",
    "auth.bad_scheme": "AuthenticationFailedInvalidHeader",
    "arm.token_audience": "InvalidAuthenticationTokenAudience",
    "arm.token_expired": "ExpiredAuthenticationToken",
    "arm.token_issuer": "InvalidAuthenticationTokenTenant",
    "arm.authorization_failed": "AuthorizationFailed",
    "arm.bad_subscription": "InvalidSubscriptionId",
    "arm.subscription_not_found": "SubscriptionNotFound",
    "arm.resource_group_not_found": "ResourceGroupNotFound",
    "arm.hub_not_found": "ResourceNotFound",
    "arm.parent_not_found": "ParentResourceNotFound",
    "arm.missing_api_version": "MissingApiVersionParameter",
    "arm.bad_api_version": "InvalidApiVersionParameter",
}
_ARM_MESSAGES: dict[str, str] = {
    "auth.missing": "Authentication failed. The 'Authorization' header is missing.",
    "auth.bad_scheme": (
        "Authentication failed. The 'Authorization' header is provided in an invalid format."
    ),
}
# Errors that the IoT Hub resource provider answers: code -> (numeric or named code, status).
_RP_CODES: dict[str, tuple[int | str, int]] = {
    "precondition.failed": (412001, 412),
    "hub.ca_not_found": ("CertificateNotFound", 404),
    "hub.no_verification_code": (400053, 400),
    "hub.verification_cn_mismatch": (400053, 400),
    "hub.verification_bad_signature": (400053, 400),
}
# Azure's own words where they are known (notes: Azure/azure-cli#13098 for the etag).
_RP_MESSAGES: dict[str, str] = {"precondition.failed": "Invalid ETag supplied."}
_RP_PREFIX: dict[str, str] = {
    "hub.no_verification_code": "Proof-Of-Possession failed. ",
    "hub.verification_cn_mismatch": "Proof-Of-Possession failed. ",
    "hub.verification_bad_signature": "Proof-Of-Possession failed. ",
}
_STATUS_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    412: "PreconditionFailed",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}


def _rfc1123(value: dt.datetime) -> str:
    """Azure's management-plane date form, ``Thu, 12 Oct 2017 19:23:50 GMT``."""
    aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return email.utils.format_datetime(aware.astimezone(dt.UTC), usegmt=True)


def arm_error_response(error: FleetPKIError, *, request_id: str | None = None) -> JSONResponse:
    """Render ``error`` as Azure does: ARM's envelope or the IoT Hub provider's body.

    Args:
        error: the refusal.
        request_id: the ``x-ms-request-id`` (the one logged for a 5xx); a new one by default.
    """
    status = http_status_for(error)
    headers: dict[str, str] = {"x-ms-request-id": request_id or str(uuid.uuid4())}
    arm_code = _ARM_CODES.get(error.code)
    if arm_code is None and isinstance(error, AuthenticationError):
        arm_code = "InvalidAuthenticationToken"
    if arm_code is not None:
        message = _ARM_MESSAGES.get(error.code, error.message)
        if error.code == "arm.hub_not_found":
            message += _RESOURCE_NOT_FOUND_HINT
        if status == 401:
            # ARM's challenge; azure-core retries only on error="insufficient_claims".
            description = message.replace('"', "'")
            headers["WWW-Authenticate"] = (
                f'Bearer error="invalid_token", error_description="{description}"'
            )
        return JSONResponse(
            {"error": {"code": arm_code, "message": message}}, status_code=status, headers=headers
        )
    default = (400004, 400) if status < 500 else (503000, 503) if status == 503 else (500001, 500)
    code, status = _RP_CODES.get(error.code, default)
    if isinstance(error, ValidationError) and error.code not in _RP_CODES:
        code, status = 400004, 400
    tracking = str(uuid.uuid4())
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    suffix = (
        f" If you contact a support representative please include this correlation "
        f"identifier: {tracking}, timestamp: {stamp}, errorcode: IH{code}."
        if isinstance(code, int)
        else ""
    )
    text = _RP_MESSAGES.get(error.code, error.message)
    if not text.endswith("."):
        text += "."
    message = _RP_PREFIX.get(error.code, "") + text + suffix
    return JSONResponse(
        {
            "code": code,
            "httpStatusCode": _STATUS_NAMES.get(status, "BadRequest"),
            "message": message,
            "details": f"fleetpki code: {error.code}",
        },
        status_code=status,
        headers=headers,
    )


class _ArmRoute(APIRoute):
    """A route whose refusals are Azure's error bodies, not problem+json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except FleetPKIError as exc:
                if http_status_for(exc) >= 500:
                    request_id = report_server_error(request.method, request.url.path, exc)
                    return arm_error_response(exc, request_id=request_id)
                return arm_error_response(exc)
            except RequestValidationError:
                return arm_error_response(
                    ValidationError("arm.bad_request", "The request content is not valid JSON.")
                )

        return handle


router = APIRouter(tags=["Azure management plane (ARM)"], route_class=_ArmRoute)
Fleet = Annotated[FleetPKI, Depends(get_fleet)]


# --------------------------------------------------------------------------- authentication


def _verifiers(request: Request) -> list[OIDCVerifier]:
    """The OIDC verifiers for ARM tokens: the configured issuer and fleetpki's own, if on.

    Built once per application (kept on ``app.state``), with ARM's audiences rather than
    the audience of fleetpki's own API.
    """
    cached = getattr(request.app.state, "arm_verifiers", None)
    if cached is not None:
        return cast(list[OIDCVerifier], cached)
    fleet = get_fleet(request)
    settings = fleet.settings
    audiences = ",".join(ARM_AUDIENCES)
    verifiers: list[OIDCVerifier] = []
    if settings.oidc_issuer and settings.oidc_jwks:
        verifiers.append(OIDCVerifier(settings.oidc_issuer, audiences, settings.oidc_jwks))
    issuer = fleet.token_issuer
    if issuer.enabled:
        verifiers.append(OIDCVerifier(issuer.issuer, audiences, str(issuer.jwks_path)))
    request.app.state.arm_verifiers = verifiers
    return verifiers


def _credential(request: Request) -> ManagementCredential:
    """Who the bearer token names: a fleetpki API token, or a verified OIDC JWT.

    Raises:
        AuthenticationError: ``auth.missing``, ``auth.bad_scheme``, ``auth.bad_token``,
            ``arm.token_issuer``, ``arm.token_audience``, ``arm.token_expired``.
    """
    token = bearer_token(request)
    if token.startswith(TOKEN_PREFIX):
        return ApiTokenSecret(token)
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise AuthenticationError("auth.bad_token", "The access token is invalid.") from exc
    issuer = unverified.get("iss")
    verifier = next((v for v in _verifiers(request) if v.issuer == issuer), None)
    if verifier is None:
        raise AuthenticationError(
            "arm.token_issuer", f"The access token is from the wrong issuer '{issuer}'."
        )
    try:
        identity = verifier.verify(token)
    except AuthenticationError as exc:
        # The verifier chains PyJWT's reason; ARM names the audience and expiry cases.
        if isinstance(exc.__cause__, jwt.InvalidAudienceError):
            allowed = ",".join(f"'{a}'" for a in ARM_AUDIENCES)
            raise AuthenticationError(
                "arm.token_audience",
                "The access token has been obtained for wrong audience or resource "
                f"'{unverified.get('aud')}'. It should exactly match with one of the allowed "
                f"audiences {allowed}.",
            ) from exc
        if isinstance(exc.__cause__, jwt.ExpiredSignatureError):
            raise AuthenticationError(
                "arm.token_expired", "The access token expiry UTC time is earlier than now."
            ) from exc
        raise
    return BearerIdentity(identity.principal_id, identity.display_name)


def _api_version(api_version: Annotated[str | None, Query(alias="api-version")] = None) -> str:
    if not api_version:
        raise ValidationError(
            "arm.missing_api_version",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    if not _API_VERSION.match(api_version):
        raise ValidationError("arm.bad_api_version", f"The api-version '{api_version}' is invalid.")
    return api_version


Credential = Annotated[ManagementCredential, Depends(_credential)]
ApiVersion = Annotated[str, Depends(_api_version)]
IfMatch = Annotated[str | None, Header(alias="If-Match")]


def _target(subscription_id: str, resource_group: str, hub_name: str) -> HubTarget:
    return HubTarget(subscription_id, resource_group, hub_name)


Target = Annotated[HubTarget, Depends(_target)]


# --------------------------------------------------------------------------- presentation


def hub_json(identity: HubIdentity) -> dict[str, Any]:
    """The hub in Azure's ``IotHubDescription`` shape (spec example ``iothub_get.json``)."""
    return {
        "id": identity.resource_id,
        "name": identity.hub_name,
        "type": "Microsoft.Devices/IotHubs",
        "location": "local",
        "tags": {},
        # The hub resource never changes through this API, so its etag is fixed.
        "etag": "AAAAAAAAAAE=",
        "properties": {
            "state": "Active",
            "provisioningState": "Succeeded",
            "hostName": identity.host_name,
            "features": "None",
            "minTlsVersion": "1.2",
            "locations": [{"location": "local", "role": "primary"}],
        },
        "sku": {"name": "S1", "tier": "Standard", "capacity": 1},
    }


def _subject(der: bytes) -> str:
    return dotnet_subject(x509.load_der_x509_certificate(der).subject)


def certificate_json(
    identity: HubIdentity, view: HubCertificateView, *, with_code: bool = False
) -> dict[str, Any]:
    """A certificate in Azure's ``CertificateDescription`` shape (ref §4.1)."""
    pem = x509.load_der_x509_certificate(view.certificate_der).public_bytes(
        serialization.Encoding.PEM
    )
    properties: dict[str, Any] = {
        "subject": _subject(view.certificate_der),
        "expiry": _rfc1123(view.not_after),
        "thumbprint": view.sha1_hex,
        "isVerified": view.is_verified,
        "created": _rfc1123(view.created_at),
        "updated": _rfc1123(view.updated_at),
    }
    if with_code:
        properties["verificationCode"] = view.verification_code
    properties["certificate"] = pem.decode()
    return {
        "properties": properties,
        "id": f"{identity.resource_id}/certificates/{view.name}",
        "name": view.name,
        "type": _CERTIFICATE_TYPE,
        "etag": view.etag,
    }


def _properties(body: Any) -> CertificatePut:
    properties = body.get("properties") if isinstance(body, dict) else None
    if not isinstance(properties, dict):
        raise ValidationError("arm.bad_request", 'The body must be {"properties": {...}}.')
    certificate = properties.get("certificate")
    verified = properties.get("isVerified", False)
    if not isinstance(certificate, str) or not certificate.strip():
        raise ValidationError("arm.bad_request", "properties.certificate must be a certificate.")
    if not isinstance(verified, bool):
        raise ValidationError("arm.bad_request", "properties.isVerified must be true or false.")
    return CertificatePut(certificate, verified)


def _required_if_match(if_match: str | None) -> str:
    if not if_match:
        raise ValidationError("arm.bad_request", "The If-Match header is required.")
    return if_match


# --------------------------------------------------------------------------- routes


@router.get(HUB_PATH)
def get_hub(
    request: Request, fleet: Fleet, credential: Credential, _v: ApiVersion, target: Target
) -> JSONResponse:
    """``IotHubResource_Get``: the hub's description."""
    identity = fleet.hub_management.get_hub(credential, target, source=client_source(request))
    return JSONResponse(hub_json(identity))


@router.get(HUB_PATH + "/certificates")
def list_certificates(
    request: Request, fleet: Fleet, credential: Credential, _v: ApiVersion, target: Target
) -> JSONResponse:
    """``Certificates_ListByIotHub``: every CA certificate, ``{"value": [...]}``."""
    service = fleet.hub_management
    views = service.list_certificates(credential, target, source=client_source(request))
    return JSONResponse({"value": [certificate_json(service.identity, v) for v in views]})


@router.get(HUB_PATH + "/certificates/{name}")
def get_certificate(
    request: Request,
    fleet: Fleet,
    credential: Credential,
    _v: ApiVersion,
    target: Target,
    name: str,
) -> JSONResponse:
    """``Certificates_Get``."""
    service = fleet.hub_management
    view = service.get_certificate(credential, target, name, source=client_source(request))
    return JSONResponse(certificate_json(service.identity, view))


@router.put(HUB_PATH + "/certificates/{name}", openapi_extra=json_body(ARM_CERTIFICATE_BODY))
def put_certificate(
    request: Request,
    fleet: Fleet,
    credential: Credential,
    _v: ApiVersion,
    target: Target,
    name: str,
    body: Annotated[Any, Body()] = None,
    if_match: IfMatch = None,
) -> JSONResponse:
    """``Certificates_CreateOrUpdate``: 201 when created, 200 when replaced (spec)."""
    command = _properties(body)
    command = CertificatePut(command.certificate, command.is_verified, if_match)
    service = fleet.hub_management
    result = service.put_certificate(
        credential, target, name, command, source=client_source(request)
    )
    return JSONResponse(
        certificate_json(service.identity, result.certificate),
        status_code=201 if result.created else 200,
    )


@router.delete(HUB_PATH + "/certificates/{name}")
def delete_certificate(
    request: Request,
    fleet: Fleet,
    credential: Credential,
    _v: ApiVersion,
    target: Target,
    name: str,
    if_match: IfMatch = None,
) -> Response:
    """``Certificates_Delete``: 200 when deleted, 204 when there was none (spec)."""
    deleted = fleet.hub_management.delete_certificate(
        credential, target, name, _required_if_match(if_match), source=client_source(request)
    )
    return Response(status_code=200 if deleted else 204)


@router.post(HUB_PATH + "/certificates/{name}/generateVerificationCode")
def generate_verification_code(
    request: Request,
    fleet: Fleet,
    credential: Credential,
    _v: ApiVersion,
    target: Target,
    name: str,
    if_match: IfMatch = None,
) -> JSONResponse:
    """``Certificates_GenerateVerificationCode``: the description with ``verificationCode``."""
    service = fleet.hub_management
    view = service.generate_verification_code(
        credential, target, name, _required_if_match(if_match), source=client_source(request)
    )
    return JSONResponse(certificate_json(service.identity, view, with_code=True))


@router.post(HUB_PATH + "/certificates/{name}/verify", openapi_extra=json_body(ARM_VERIFY_BODY))
def verify_certificate(
    request: Request,
    fleet: Fleet,
    credential: Credential,
    _v: ApiVersion,
    target: Target,
    name: str,
    body: Annotated[Any, Body()] = None,
    if_match: IfMatch = None,
) -> JSONResponse:
    """``Certificates_Verify``: proof of possession; the verified description, new etag."""
    certificate = body.get("certificate") if isinstance(body, dict) else None
    if not isinstance(certificate, str) or not certificate.strip():
        raise ValidationError("arm.bad_request", 'The body must be {"certificate": "<PEM>"}.')
    service = fleet.hub_management
    view = service.verify_certificate(
        credential,
        target,
        name,
        _required_if_match(if_match),
        certificate,
        source=client_source(request),
    )
    return JSONResponse(certificate_json(service.identity, view))
