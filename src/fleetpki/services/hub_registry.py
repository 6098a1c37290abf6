"""The hub's device registry: identities, twins and statistics.

Semantics follow Azure IoT Hub's service API (shared/reference/azure-iot-hub-protocol.md
§3.2, §3.3). Changes that concern live connections (disable, delete, desired patches)
reach the hub through the application's event bus (:mod:`fleetpki.services.events`)
after the transaction commits.
Device authentication on connect is :mod:`fleetpki.services.hub_authentication`.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fleetpki.errors import ConflictError, NotFoundError, ValidationError
from fleetpki.hub.policy import AuthType, DeviceStatus
from fleetpki.services.events import notify_after_commit
from fleetpki.services.hub_trust import check_if_match, new_etag
from fleetpki.services.notifications import DesiredPatched, DeviceBlocked
from fleetpki.store.hub_models import HubC2DMessage, HubDevice

__all__ = [
    "AuthType",
    "DeviceSpec",
    "DeviceStatus",
    "RegistryStatistics",
    "connected_device_count",
    "delete_device",
    "get_device",
    "get_twin",
    "list_devices",
    "patch_reported",
    "patch_twin",
    "put_device",
    "record_connection",
    "registry_statistics",
    "replace_twin",
    "set_device_status",
]

#: Device ids as Azure allows them: up to 128 characters of letters, digits and
#: ``- . + % _ # * ? ! ( ) , = @ $ '`` (ref §1.3).
_ID_EXTRA = set("-.+%_#*?!(),=@$'")
_MAX_ID = 128


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A device as a PUT creates or replaces it.

    Attributes:
        device_id: the registry id (and the certificate CN).
        auth_type: certificateAuthority (default) or selfSigned; SAS devices are not
            supported by the MQTT side yet and are refused.
        primary_thumbprint / secondary_thumbprint: for selfSigned devices.
        status / status_reason: enabled or disabled, and why.
    """

    device_id: str
    auth_type: AuthType = AuthType.CERTIFICATE_AUTHORITY
    primary_thumbprint: str | None = None
    secondary_thumbprint: str | None = None
    status: DeviceStatus = DeviceStatus.ENABLED
    status_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RegistryStatistics:
    """``GET /statistics/devices`` (ref §3.2)."""

    total: int
    enabled: int
    disabled: int


def _check_device_id(device_id: str) -> None:
    if (
        not device_id
        or len(device_id) > _MAX_ID
        or any(not (c.isascii() and (c.isalnum() or c in _ID_EXTRA)) for c in device_id)
    ):
        raise ValidationError("hub.bad_device_id", "not a valid device id")


def _clean_thumbprint(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    cleaned = value.strip().replace(":", "").upper()
    if len(cleaned) not in (40, 64) or any(c not in "0123456789ABCDEF" for c in cleaned):
        raise ValidationError("hub.bad_thumbprint", "a thumbprint is 40 or 64 hex characters")
    return cleaned


# --------------------------------------------------------------------------- devices


def get_device(session: Session, device_id: str) -> HubDevice:
    """The registry entry of ``device_id``.

    Raises:
        NotFoundError: ``hub.device_not_found``.
    """
    record = session.get(HubDevice, device_id)
    if record is None:
        raise NotFoundError("hub.device_not_found", f"no device {device_id!r} in the hub")
    return record


def list_devices(session: Session, *, limit: int | None = None) -> list[HubDevice]:
    """Registered devices by id, at most ``limit``."""
    query = select(HubDevice).order_by(HubDevice.device_id)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def put_device(
    session: Session, spec: DeviceSpec, *, now: dt.datetime, if_match: str | None = None
) -> tuple[HubDevice, bool]:
    """Create or update a device (ref §3.2 PUT ``/devices/{id}``, §3.3 etags).

    Returns the entry and whether it was created. Without ``If-Match`` an existing
    device is a conflict; with one it must match the device's etag (``*`` matches).

    Raises:
        ValidationError: ``hub.bad_device_id``, ``hub.bad_thumbprint``,
            ``hub.bad_auth_type`` (SAS devices), ``hub.thumbprint_required``.
        ConflictError: ``hub.device_exists`` (409), ``precondition.failed`` (412).
        NotFoundError: ``hub.device_not_found`` for an update with an etag of a missing device.
    """
    _check_device_id(spec.device_id)
    if spec.auth_type is AuthType.SAS:
        raise ValidationError(
            "hub.bad_auth_type", "SAS device authentication is not supported; use X.509"
        )
    primary = _clean_thumbprint(spec.primary_thumbprint)
    secondary = _clean_thumbprint(spec.secondary_thumbprint)
    if spec.auth_type is AuthType.SELF_SIGNED and not (primary or secondary):
        raise ValidationError(
            "hub.thumbprint_required", "a selfSigned device needs a primary or secondary thumbprint"
        )
    record = session.get(HubDevice, spec.device_id)
    if record is None:
        if if_match is not None and if_match.strip().strip('"') != "*":
            raise NotFoundError("hub.device_not_found", f"no device {spec.device_id!r} in the hub")
        record = HubDevice(
            device_id=spec.device_id,
            status=spec.status.value,
            status_reason=spec.status_reason,
            auth_type=spec.auth_type.value,
            primary_thumbprint=primary,
            secondary_thumbprint=secondary,
            etag=new_etag(),
            generation_id=str(10**17 + secrets.randbelow(9 * 10**17)),
            created_at=now,
            status_updated_at=now,
            connection_state="Disconnected",
            c2d_count=0,
            tags={},
            desired={},
            desired_version=1,
            reported={},
            reported_version=1,
            twin_etag=new_etag(),
        )
        session.add(record)
        session.flush()
        return record, True
    if if_match is None:
        raise ConflictError("hub.device_exists", f"device {spec.device_id!r} already exists")
    check_if_match(if_match, record.etag)
    _apply_status(session, record, spec.status, spec.status_reason, now)
    record.auth_type = spec.auth_type.value
    record.primary_thumbprint = primary
    record.secondary_thumbprint = secondary
    record.etag = new_etag()
    return record, False


def _apply_status(
    session: Session,
    record: HubDevice,
    status: DeviceStatus,
    reason: str | None,
    now: dt.datetime,
) -> None:
    if record.status != status.value:
        record.status = status.value
        record.status_updated_at = now
        if status is DeviceStatus.DISABLED:
            notify_after_commit(session, DeviceBlocked(record.device_id, "hub.device_disabled"))
    record.status_reason = reason


def set_device_status(
    session: Session,
    device_id: str,
    status: DeviceStatus,
    *,
    now: dt.datetime,
    reason: str | None = None,
    if_match: str | None = None,
) -> HubDevice:
    """Enable or disable a device; disabling closes its live session after commit.

    Raises:
        NotFoundError: ``hub.device_not_found``.
        ConflictError: ``precondition.failed``.
    """
    record = get_device(session, device_id)
    check_if_match(if_match, record.etag)
    _apply_status(session, record, status, reason, now)
    record.etag = new_etag()
    return record


def delete_device(session: Session, device_id: str, *, if_match: str | None = None) -> None:
    """Remove a device and its queued messages; its live session is closed after commit.

    Raises:
        NotFoundError: ``hub.device_not_found``.
        ConflictError: ``precondition.failed``.
    """

    record = get_device(session, device_id)
    check_if_match(if_match, record.etag)
    session.execute(delete(HubC2DMessage).where(HubC2DMessage.device_id == device_id))
    session.delete(record)
    session.flush()
    notify_after_commit(session, DeviceBlocked(device_id, "hub.unknown_device"))


def registry_statistics(session: Session) -> RegistryStatistics:
    """Device counts (ref §3.2 ``/statistics/devices``)."""
    rows = dict(
        session.execute(select(HubDevice.status, func.count()).group_by(HubDevice.status)).all()
    )
    enabled = int(rows.get("enabled", 0))
    disabled = int(rows.get("disabled", 0))
    return RegistryStatistics(total=enabled + disabled, enabled=enabled, disabled=disabled)


def connected_device_count(session: Session) -> int:
    """Devices connected now, as recorded by the MQTT server (``/statistics/service``)."""
    query = select(func.count()).where(HubDevice.connection_state == "Connected")
    return int(session.scalar(query) or 0)


def record_connection(
    session: Session, device_id: str, *, connected: bool, now: dt.datetime
) -> None:
    """Record that a device connected or disconnected (for connectionState and statistics).

    A device deleted meanwhile is ignored.
    """
    record = session.get(HubDevice, device_id)
    if record is None:
        return
    record.connection_state = "Connected" if connected else "Disconnected"
    record.connection_state_updated_at = now
    record.last_activity_at = now


# --------------------------------------------------------------------------- twins


def get_twin(session: Session, device_id: str) -> HubDevice:
    """The device whose twin (tags, desired, reported, versions) is wanted.

    Raises:
        NotFoundError: ``hub.device_not_found``.
    """
    return get_device(session, device_id)


def _merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    # JSON merge patch (RFC 7396): null deletes, objects merge, anything else replaces.
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = _merge_patch(result[key], value)
        elif isinstance(value, Mapping):
            result[key] = _merge_patch({}, value)
        else:
            result[key] = value
    return result


def _strip_meta(properties: Mapping[str, Any] | None) -> dict[str, Any]:
    if properties is None:
        return {}
    if not isinstance(properties, Mapping):
        raise ValidationError("hub.bad_twin", "twin properties must be a JSON object")
    return {k: v for k, v in properties.items() if not k.startswith("$")}


def _twin_parts(document: Mapping[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    tags = document.get("tags")
    if tags is not None and not isinstance(tags, Mapping):
        raise ValidationError("hub.bad_twin", "twin tags must be a JSON object")
    properties = document.get("properties") or {}
    if not isinstance(properties, Mapping):
        raise ValidationError("hub.bad_twin", "twin properties must be a JSON object")
    desired = properties.get("desired")
    return (
        None if tags is None else dict(tags),
        None if desired is None else _strip_meta(desired),
    )


def patch_twin(
    session: Session,
    device_id: str,
    document: Mapping[str, Any],
    *,
    now: dt.datetime,
    if_match: str | None = None,
) -> HubDevice:
    """Merge ``{"tags": .., "properties": {"desired": ..}}`` into the twin (ref §3.3).

    ``null`` deletes a key. A desired change bumps ``desired.$version`` and is sent to
    the connected device after commit. Reported properties cannot be set here.

    Raises:
        NotFoundError: ``hub.device_not_found``.
        ConflictError: ``precondition.failed``.
        ValidationError: ``hub.bad_twin``.
    """
    record = get_device(session, device_id)
    check_if_match(if_match, record.twin_etag)
    tags, desired = _twin_parts(document)
    if tags is not None:
        record.tags = _merge_patch(record.tags, tags)
    if desired:
        record.desired = _merge_patch(record.desired, desired)
        record.desired_version += 1
        notify_after_commit(
            session, DesiredPatched(device_id, dict(desired), record.desired_version)
        )
    record.twin_etag = new_etag()
    return record


def replace_twin(
    session: Session,
    device_id: str,
    document: Mapping[str, Any],
    *,
    now: dt.datetime,
    if_match: str | None = None,
) -> HubDevice:
    """Replace the twin's tags and desired properties (ref §3.3 twin PUT).

    The device receives the new desired properties, with removed keys as ``null``.

    Raises:
        NotFoundError: ``hub.device_not_found``.
        ConflictError: ``precondition.failed``.
        ValidationError: ``hub.bad_twin``.
    """
    record = get_device(session, device_id)
    check_if_match(if_match, record.twin_etag)
    tags, desired = _twin_parts(document)
    record.tags = tags or {}
    new_desired = desired or {}
    if new_desired != record.desired:
        patch: dict[str, Any] = {k: None for k in record.desired if k not in new_desired}
        patch.update(new_desired)
        record.desired = new_desired
        record.desired_version += 1
        notify_after_commit(session, DesiredPatched(device_id, patch, record.desired_version))
    record.twin_etag = new_etag()
    return record


def patch_reported(
    session: Session, device_id: str, patch: Mapping[str, Any], *, now: dt.datetime
) -> int:
    """Merge a device's reported-properties patch (ref §1.5); return the new ``$version``.

    Raises:
        NotFoundError: ``hub.device_not_found``.
        ValidationError: ``hub.bad_twin`` when the patch is not a JSON object.
    """
    if not isinstance(patch, Mapping):
        raise ValidationError("hub.bad_twin", "a reported patch must be a JSON object")
    record = get_device(session, device_id)
    record.reported = _merge_patch(record.reported, _strip_meta(patch))
    record.reported_version += 1
    record.twin_etag = new_etag()
    record.last_activity_at = now
    return record.reported_version
