"""Azure Device Provisioning Service's device dialect, pure: usernames, topics, JSON shapes.

The facts are those of shared/reference/azure-iot-hub-protocol.md §2 ("ref §2"), as the
unmodified ``azure-iot-device`` SDK's ``ProvisioningDeviceClient`` speaks them:

* CONNECT username ``{idScope}/registrations/{registrationId}/api-version=...`` (no
  ``?``), the client id being the registration id. A hub username is
  ``{host}/{clientId}/?...``, so the two are told apart by the second segment being
  ``registrations`` *and* the third being the client id (a device called
  ``registrations`` on the hub has ``?...`` there).
* Requests: ``$dps/registrations/PUT/iotdps-register/?$rid={rid}`` and
  ``$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}``.
* Answers: ``$dps/registrations/res/{status}/?$rid={rid}[&retry-after={n}]``. The SDK
  splits the topic on ``$`` (status in the second piece, properties in the third), so
  the answer must hold no other ``$``: the request id is percent-encoded (the ``$`` trap).
* Bodies: the runtime API's ``RegistrationOperationStatus`` and ``DeviceRegistrationResult``
  (learn.microsoft.com/rest/api/iot-dps/device/runtime-registration), and DPS's error
  body ``{"errorCode", "trackingId", "message", "timestampUtc"}``.

Nothing here does I/O; the MQTT channel (`fleetpki.hub.provisioning`), the HTTPS routes
(`fleetpki.api.dps`) and the device SDK (`fleetpki.device.provisioning`) share it.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from fleetpki.errors import ValidationError

__all__ = [
    "DPS_API_VERSION",
    "DPS_ERROR_NUMBERS",
    "DPS_RESPONSE_FILTER",
    "DpsRequest",
    "DpsUsername",
    "OperationStatusRequest",
    "RegisterRequest",
    "RegistrationOperation",
    "RegistrationState",
    "RegistrationStatus",
    "Substatus",
    "check_registration_id",
    "dps_error_body",
    "dps_error_number",
    "dps_register_topic",
    "dps_status_topic",
    "dps_username",
    "is_dps_username",
    "parse_dps_topic",
    "parse_dps_username",
    "parse_register_body",
    "parse_response_topic",
    "response_topic",
    "utc_text",
]

#: The api-version the SDK 2.14.0 puts in its username (ref §2).
DPS_API_VERSION = "2019-03-31"
#: What the SDK subscribes to for every answer (ref §2).
DPS_RESPONSE_FILTER = "$dps/registrations/res/#"
_REGISTER_PREFIX = "$dps/registrations/PUT/iotdps-register/"
_STATUS_PREFIX = "$dps/registrations/GET/iotdps-get-operationstatus/"
_RESPONSE_PREFIX = "$dps/registrations/res/"
#: Registration ids: up to 128 of letters, digits and ``- . _ :``, ending in a letter, a
#: digit or ``-`` (learn.microsoft.com, "DPS terminology: registration ID").
_REGISTRATION_ID_EXTRA = frozenset("-._:")
_MAX_REGISTRATION_ID = 128
_MAX_RID = 128
_MAX_OPERATION_ID = 128

#: DPS error numbers by HTTP status: Azure's pattern (status x 1000 + n). The ones the
#: SDK and Azure's docs show are 401002 (unauthorized) and 429001 (throttled); the rest
#: are fleetpki's, in that pattern.
DPS_ERROR_NUMBERS: Mapping[int, int] = {
    400: 400004,
    401: 401002,
    403: 403000,
    404: 404201,
    409: 409000,
    412: 412002,
    413: 413000,
    429: 429001,
    500: 500000,
    502: 502000,
    503: 503000,
}


class RegistrationStatus(enum.StrEnum):
    """A registration's status (the runtime API's ``status``)."""

    UNASSIGNED = "unassigned"
    ASSIGNING = "assigning"
    ASSIGNED = "assigned"
    FAILED = "failed"
    DISABLED = "disabled"


class Substatus(enum.StrEnum):
    """How an assigned registration came about (``registrationState.substatus``)."""

    INITIAL_ASSIGNMENT = "initialAssignment"
    DEVICE_DATA_MIGRATED = "deviceDataMigrated"
    DEVICE_DATA_RESET = "deviceDataReset"
    REPROVISIONED_TO_INITIAL_ASSIGNMENT = "reprovisionedToInitialAssignment"


def utc_text(moment: dt.datetime) -> str:
    """A UTC time as DPS writes it: ISO 8601 with a ``T`` and a ``Z``."""
    text = moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds")
    return text + "Z"


def _parse_utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.removesuffix("Z")).replace(tzinfo=dt.UTC)


def _bad(reason: str, code: str = "provisioning.bad_request") -> ValidationError:
    return ValidationError(code, reason)


def check_registration_id(registration_id: str) -> str:
    """Return ``registration_id`` if DPS allows it.

    Raises:
        ValidationError: ``provisioning.bad_registration_id``.
    """
    if (
        not registration_id
        or len(registration_id) > _MAX_REGISTRATION_ID
        or any(
            not (c.isascii() and (c.isalnum() or c in _REGISTRATION_ID_EXTRA))
            for c in registration_id
        )
        or not (registration_id[-1].isalnum() or registration_id[-1] == "-")
    ):
        raise _bad(
            "a registration id is 1-128 letters, digits, '-', '.', '_' or ':', ending in a "
            "letter, a digit or '-'",
            "provisioning.bad_registration_id",
        )
    return registration_id


# --- CONNECT (ref §2) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DpsUsername:
    """A DPS CONNECT username, split.

    Attributes:
        id_scope: the provisioning service's ID scope.
        registration_id: the registration id (equal to the packet's client id).
        parameters: the pairs after the registration id (``api-version``, ``ClientVersion``).
    """

    id_scope: str
    registration_id: str
    parameters: Mapping[str, str]


def is_dps_username(username: str | None, client_id: str) -> bool:
    """Whether a CONNECT is meant for the provisioning service rather than the hub."""
    if not username:
        return False
    parts = username.split("/", 3)
    return len(parts) >= 3 and parts[1] == "registrations" and parts[2] == client_id


def dps_username(id_scope: str, registration_id: str, client_version: str = "") -> str:
    """The username a device sends to DPS (what the SDK builds, ref §2)."""
    tail = f"api-version={DPS_API_VERSION}"
    if client_version:
        tail += f"&ClientVersion={quote(client_version, safe='')}"
    return f"{id_scope}/registrations/{registration_id}/{tail}"


def parse_dps_username(username: str | None, client_id: str) -> DpsUsername:
    """Split a DPS CONNECT username and check it against the client id.

    Raises:
        ValidationError: ``provisioning.bad_username``;
            ``provisioning.bad_registration_id`` for a client id DPS does not allow.
    """
    if not username or not is_dps_username(username, client_id):
        raise _bad(
            "the username must be '{idScope}/registrations/{registrationId}/api-version=...' "
            "with the packet's client id",
            "provisioning.bad_username",
        )
    id_scope, _, registration_id, *rest = username.split("/", 3)
    check_registration_id(registration_id)
    if not id_scope:
        raise _bad("the username names no ID scope", "provisioning.bad_username")
    return DpsUsername(id_scope, registration_id, _pairs(rest[0] if rest else ""))


def _pairs(query: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in query.split("&"):
        if not item:
            continue
        key, _, value = item.partition("=")
        try:
            pairs[unquote(key, errors="strict")] = unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise _bad("a topic or username pair is not UTF-8 when decoded") from None
    return pairs


# --- requests and answers (ref §2) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """``$dps/registrations/PUT/iotdps-register/?$rid={rid}``."""

    rid: str


@dataclass(frozen=True, slots=True)
class OperationStatusRequest:
    """``$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}``."""

    rid: str
    operation_id: str


DpsRequest = RegisterRequest | OperationStatusRequest


def parse_dps_topic(topic: str) -> DpsRequest:
    """The request a device published.

    Raises:
        ValidationError: ``provisioning.bad_topic`` for any other topic, or one without
            ``$rid`` (or, for a status request, ``operationId``).
    """
    for prefix, kind in ((_REGISTER_PREFIX, "register"), (_STATUS_PREFIX, "status")):
        if not topic.startswith(prefix):
            continue
        rest = topic[len(prefix) :]
        if not rest.startswith("?"):
            break
        try:
            pairs = _pairs(rest[1:])
        except ValidationError:
            break
        rid = pairs.get("$rid", "")
        if not rid or len(rid) > _MAX_RID:
            break
        if kind == "register":
            return RegisterRequest(rid)
        operation_id = pairs.get("operationId", "")
        if not operation_id or len(operation_id) > _MAX_OPERATION_ID:
            break
        return OperationStatusRequest(rid, operation_id)
    raise _bad(f"not a DPS request topic: {topic[:200]!r}", "provisioning.bad_topic")


def dps_register_topic(rid: str) -> str:
    """The topic of a registration request (the device side)."""
    return f"{_REGISTER_PREFIX}?$rid={quote(rid, safe='')}"


def dps_status_topic(rid: str, operation_id: str) -> str:
    """The topic of an operation-status request (the device side)."""
    return f"{_STATUS_PREFIX}?$rid={quote(rid, safe='')}&operationId={quote(operation_id, safe='')}"


def response_topic(status: int, rid: str, *, retry_after: int | None = None) -> str:
    """The answer's topic. Nothing but ``$dps`` and ``$rid`` may carry a ``$`` (ref §2)."""
    topic = f"{_RESPONSE_PREFIX}{int(status)}/?$rid={quote(rid, safe='')}"
    if retry_after is not None:
        topic += f"&retry-after={int(retry_after)}"
    return topic


def parse_response_topic(topic: str) -> tuple[int, dict[str, str]]:
    """The status and properties of an answer, split as the SDK splits them (ref §2).

    Raises:
        ValidationError: ``provisioning.bad_topic``.
    """
    pieces = topic.split("$")
    if len(pieces) != 3 or not topic.startswith(_RESPONSE_PREFIX):
        raise _bad(f"not a DPS answer topic: {topic[:200]!r}", "provisioning.bad_topic")
    segments = pieces[1].split("/")
    try:
        status = int(segments[3])
    except (IndexError, ValueError):
        raise _bad("the DPS answer carries no status", "provisioning.bad_topic") from None
    return status, _pairs(pieces[2])


def parse_register_body(body: bytes) -> tuple[str | None, Any]:
    """The ``registrationId`` and ``payload`` of a registration request's JSON body.

    Raises:
        ValidationError: ``provisioning.bad_payload`` for a body that is not a JSON
            object, or whose ``registrationId`` is not a string.
    """
    try:
        data = json.loads(body.decode("utf-8")) if body.strip() else {}
    except (UnicodeDecodeError, ValueError):
        raise _bad("the registration body is not JSON", "provisioning.bad_payload") from None
    if not isinstance(data, dict):
        raise _bad("the registration body is not a JSON object", "provisioning.bad_payload")
    registration_id = data.get("registrationId")
    if registration_id is not None and not isinstance(registration_id, str):
        raise _bad("registrationId must be a string", "provisioning.bad_payload")
    return registration_id, data.get("payload")


# --- JSON shapes (the runtime API) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistrationState:
    """``DeviceRegistrationResult``: where a registration stands.

    Attributes:
        registration_id / device_id / assigned_hub: who, as what, where.
        status / substatus: the outcome and how it came about.
        enrollment_group_id: the group that attested the device, if a group did.
        created_at / updated_at: when the registration was first and last made.
        etag: changes with every registration.
        error_code / error_message: why it failed or is disabled.
        payload: what the allocation returned to the device (DPS's custom payload).
    """

    registration_id: str
    status: RegistrationStatus
    created_at: dt.datetime
    updated_at: dt.datetime
    etag: str
    device_id: str | None = None
    assigned_hub: str | None = None
    substatus: Substatus | None = None
    enrollment_group_id: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    payload: Any = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RegistrationState:
        """The state :meth:`to_json` wrote (as the service stores it).

        Raises:
            ValueError: for a body that is not such a state.
        """
        substatus = data.get("substatus")
        return cls(
            registration_id=str(data["registrationId"]),
            status=RegistrationStatus(data["status"]),
            created_at=_parse_utc(str(data["createdDateTimeUtc"])),
            updated_at=_parse_utc(str(data["lastUpdatedDateTimeUtc"])),
            etag=str(data["etag"]),
            device_id=data.get("deviceId"),
            assigned_hub=data.get("assignedHub"),
            substatus=Substatus(substatus) if substatus else None,
            enrollment_group_id=(data.get("x509") or {}).get("enrollmentGroupId"),
            error_code=data.get("errorCode"),
            error_message=data.get("errorMessage"),
            payload=data.get("payload"),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object, with Azure's field names."""
        body: dict[str, Any] = {}
        if self.enrollment_group_id is not None:
            body["x509"] = {"enrollmentGroupId": self.enrollment_group_id}
        else:
            body["x509"] = {}
        body |= {
            "registrationId": self.registration_id,
            "createdDateTimeUtc": utc_text(self.created_at),
            "status": self.status.value,
        }
        if self.assigned_hub is not None:
            body["assignedHub"] = self.assigned_hub
        if self.device_id is not None:
            body["deviceId"] = self.device_id
        if self.substatus is not None:
            body["substatus"] = self.substatus.value
        if self.error_code is not None:
            body["errorCode"] = self.error_code
        if self.error_message is not None:
            body["errorMessage"] = self.error_message
        body["lastUpdatedDateTimeUtc"] = utc_text(self.updated_at)
        body["etag"] = self.etag
        if self.payload is not None:
            body["payload"] = self.payload
        return body


@dataclass(frozen=True, slots=True)
class RegistrationOperation:
    """``RegistrationOperationStatus``: the answer to a registration or a status request.

    Attributes:
        operation_id: what the device polls with.
        status: ``assigning`` while it runs, then the registration's outcome.
        state: the registration's state once the operation ended.
        retry_after: seconds the device should wait before it polls.
    """

    operation_id: str
    status: RegistrationStatus
    state: RegistrationState | None = None
    retry_after: int | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON object, with Azure's field names."""
        body: dict[str, Any] = {"operationId": self.operation_id, "status": self.status.value}
        if self.state is not None:
            body["registrationState"] = self.state.to_json()
        return body

    def assigning(self) -> RegistrationOperation:
        """The same operation as a registration request answers it: still assigning."""
        return RegistrationOperation(
            self.operation_id, RegistrationStatus.ASSIGNING, None, self.retry_after
        )


def dps_error_number(status: int) -> int:
    """DPS's error number for an HTTP status (`DPS_ERROR_NUMBERS`)."""
    return DPS_ERROR_NUMBERS.get(status, status * 1000)


def dps_error_body(
    status: int, message: str, *, tracking_id: str, now: dt.datetime, code: str | None = None
) -> dict[str, Any]:
    """DPS's error body; ``code`` (fleetpki's stable code) is added as ``code``."""
    body: dict[str, Any] = {
        "errorCode": dps_error_number(status),
        "trackingId": tracking_id,
        "message": message,
        "timestampUtc": utc_text(now),
    }
    if code is not None:
        body["code"] = code
    return body
