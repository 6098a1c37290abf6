"""The hub's device identities: create, read, list, enable, disable, delete (ref §3.2, §3.3).

Semantics follow Azure IoT Hub's service API (shared/reference/azure-iot-hub-protocol.md).
Changes that concern live connections (disable, delete) reach the hub through the
application's event bus after the unit of work commits (:class:`DeviceBlocked`).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from fleetpki.errors import ConflictError, NotFoundError, ValidationError
from fleetpki.hub.policy import AuthType, DeviceStatus
from fleetpki.services.context import Clock
from fleetpki.services.hub_etags import check_if_match, new_etag
from fleetpki.services.hub_notices import tell_hub_nodes
from fleetpki.services.notifications import DeviceBlocked
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.store.hub_models import HubDevice

__all__ = [
    "AuthType",
    "DeviceSpec",
    "DeviceStatus",
    "HubDeviceService",
    "HubDeviceView",
    "device_view",
    "require_device",
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
class HubDeviceView:
    """A registry entry as the service API presents it (ref §3.2 "Device fields")."""

    device_id: str
    generation_id: str
    etag: str
    status: str
    status_reason: str | None
    auth_type: str
    primary_thumbprint: str | None
    secondary_thumbprint: str | None
    created_at: dt.datetime
    status_updated_at: dt.datetime
    connection_state: str
    connection_state_updated_at: dt.datetime | None
    last_activity_at: dt.datetime | None
    c2d_count: int


def device_view(record: HubDevice) -> HubDeviceView:
    """The view of a registry entry (call inside the unit of work that read it)."""
    return HubDeviceView(
        device_id=record.device_id,
        generation_id=record.generation_id,
        etag=record.etag,
        status=record.status,
        status_reason=record.status_reason,
        auth_type=record.auth_type,
        primary_thumbprint=record.primary_thumbprint,
        secondary_thumbprint=record.secondary_thumbprint,
        created_at=record.created_at,
        status_updated_at=record.status_updated_at,
        connection_state=record.connection_state,
        connection_state_updated_at=record.connection_state_updated_at,
        last_activity_at=record.last_activity_at,
        c2d_count=record.c2d_count,
    )


def require_device(tx: UnitOfWork, device_id: str, *, for_update: bool = False) -> HubDevice:
    """The registry entry of ``device_id`` in the caller's unit of work.

    ``for_update`` locks the row until the unit ends: callers that change it pass it,
    so two processes changing one device (a twin merge, a counter) never lose a write.

    Raises:
        NotFoundError: ``hub.device_not_found``.
    """
    record = tx.hub_devices.get(device_id, for_update=for_update)
    if record is None:
        raise NotFoundError("hub.device_not_found", f"no device {device_id!r} in the hub")
    return record


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


def _apply_status(
    tx: UnitOfWork, record: HubDevice, status: DeviceStatus, reason: str | None, now: dt.datetime
) -> None:
    if record.status != status.value:
        record.status = status.value
        record.status_updated_at = now
        if status is DeviceStatus.DISABLED:
            tell_hub_nodes(tx, DeviceBlocked(record.device_id, "hub.device_disabled"), at=now)
    record.status_reason = reason


def put_device_in(
    tx: UnitOfWork, spec: DeviceSpec, *, now: dt.datetime, if_match: str | None = None
) -> tuple[HubDevice, bool]:
    """:meth:`HubDeviceService.put` inside the caller's unit of work (returns the record)."""
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
    record = tx.hub_devices.get(spec.device_id, for_update=True)
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
        tx.hub_devices.add(record)
        return record, True
    if if_match is None:
        raise ConflictError("hub.device_exists", f"device {spec.device_id!r} already exists")
    check_if_match(if_match, record.etag)
    _apply_status(tx, record, spec.status, spec.status_reason, now)
    record.auth_type = spec.auth_type.value
    record.primary_thumbprint = primary
    record.secondary_thumbprint = secondary
    record.etag = new_etag()
    return record, False


def set_status_in(
    tx: UnitOfWork,
    device_id: str,
    status: DeviceStatus,
    *,
    now: dt.datetime,
    reason: str | None = None,
    if_match: str | None = None,
) -> HubDevice:
    """:meth:`HubDeviceService.set_status` inside the caller's unit of work."""
    record = require_device(tx, device_id, for_update=True)
    check_if_match(if_match, record.etag)
    _apply_status(tx, record, status, reason, now)
    record.etag = new_etag()
    return record


def delete_device_in(
    tx: UnitOfWork, device_id: str, *, now: dt.datetime, if_match: str | None = None
) -> None:
    """:meth:`HubDeviceService.delete` inside the caller's unit of work."""
    record = require_device(tx, device_id, for_update=True)
    check_if_match(if_match, record.etag)
    tx.hub_c2d.delete_for_device(device_id)
    tx.hub_devices.delete(record)
    tell_hub_nodes(tx, DeviceBlocked(device_id, "hub.unknown_device"), at=now)


def record_connection_in(
    tx: UnitOfWork, device_id: str, *, connected: bool, now: dt.datetime
) -> None:
    """:meth:`HubDeviceService.record_connection` inside the caller's unit of work."""
    record = tx.hub_devices.get(device_id, for_update=True)
    if record is None:
        return
    record.connection_state = "Connected" if connected else "Disconnected"
    record.connection_state_updated_at = now
    record.last_activity_at = now


class HubDeviceService:
    """Device identities of the built-in hub (ref §3.2, §3.3).

    Args:
        store: the database.
        clock: the source of "now".
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def put(self, spec: DeviceSpec, *, if_match: str | None = None) -> tuple[HubDeviceView, bool]:
        """Create or update a device (ref §3.2 PUT ``/devices/{id}``, §3.3 etags).

        Returns the entry and whether it was created. Without ``If-Match`` an existing
        device is a conflict; with one it must match the device's etag (``*`` matches).
        Disabling a device closes its live session after commit.

        Raises:
            ValidationError: ``hub.bad_device_id``, ``hub.bad_thumbprint``,
                ``hub.bad_auth_type`` (SAS devices), ``hub.thumbprint_required``.
            ConflictError: ``hub.device_exists`` (409), ``precondition.failed`` (412).
            NotFoundError: ``hub.device_not_found`` for an update with an etag of a
                missing device.
        """
        with self._store.transaction() as tx:
            record, created = put_device_in(tx, spec, now=self._clock(), if_match=if_match)
            return device_view(record), created

    def get(self, device_id: str) -> HubDeviceView:
        """The registry entry of ``device_id``.

        Raises:
            NotFoundError: ``hub.device_not_found``.
        """
        with self._store.transaction() as tx:
            return device_view(require_device(tx, device_id))

    def list(self, *, limit: int | None = None) -> list[HubDeviceView]:
        """Registered devices by id, at most ``limit``."""
        with self._store.transaction() as tx:
            return [device_view(r) for r in tx.hub_devices.list(limit=limit)]

    def set_status(
        self,
        device_id: str,
        status: DeviceStatus,
        *,
        reason: str | None = None,
        if_match: str | None = None,
    ) -> HubDeviceView:
        """Enable or disable a device; disabling closes its live session after commit.

        Raises:
            NotFoundError: ``hub.device_not_found``.
            ConflictError: ``precondition.failed``.
        """
        with self._store.transaction() as tx:
            record = set_status_in(
                tx, device_id, status, now=self._clock(), reason=reason, if_match=if_match
            )
            return device_view(record)

    def delete(self, device_id: str, *, if_match: str | None = None) -> None:
        """Remove a device and its queued messages; its live session is closed after commit.

        Raises:
            NotFoundError: ``hub.device_not_found``.
            ConflictError: ``precondition.failed``.
        """
        with self._store.transaction() as tx:
            delete_device_in(tx, device_id, now=self._clock(), if_match=if_match)

    def record_connection(self, device_id: str, *, connected: bool) -> None:
        """Record that a device connected or disconnected (connectionState, statistics).

        A device deleted meanwhile is ignored.
        """
        with self._store.transaction() as tx:
            record_connection_in(tx, device_id, connected=connected, now=self._clock())
