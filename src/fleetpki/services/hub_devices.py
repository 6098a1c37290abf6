"""The hub's device identities: create, read, list, enable, disable, delete (ref §3.2, §3.3).

Semantics follow Azure IoT Hub's service API (shared/reference/azure-iot-hub-protocol.md).
Changes that concern live connections reach the hub through the application's event bus
after the unit of work commits: a disabled or deleted device, or an X.509 device turned
into a sas one (:class:`DeviceBlocked`), and replaced or removed symmetric keys
(:class:`DeviceKeysReplaced`: the sessions signed with a key that is gone end, the
others stay).

A sas device has two symmetric keys, given by the caller (base64 of 16 to 64 bytes, as
Azure requires) or generated (256 bits each) when not given; an update that names no
keys keeps the device's keys, one that names them replaces them (key rotation). Keys
are sealed at rest (`fleetpki.services.hub_device_keys`).

Connection state (``connectionState``, ``connectionStateUpdatedTime``,
``lastActivityTime``) is what the hub's MQTT servers record when a device connects and
disconnects (:meth:`HubDeviceService.record_connections`), a disconnect only from the
hub node and connection recorded as holding the device; with
``hub_route_connection_state_events`` each change is also a device connection state
event on the built-in endpoint (`fleetpki.services.hub_routing`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from fleetpki.errors import ConflictError, NotFoundError, ValidationError
from fleetpki.hub.azure.sas import generate_key, is_valid_key, key_id
from fleetpki.hub.policy import AuthType, DeviceStatus
from fleetpki.services.context import Clock
from fleetpki.services.hub_device_keys import DeviceKeySeal
from fleetpki.services.hub_etags import check_if_match, new_etag
from fleetpki.services.hub_notices import tell_hub_nodes
from fleetpki.services.hub_routing import EventRouting, route_connection_state_in
from fleetpki.services.notifications import DeviceBlocked, DeviceKeysReplaced
from fleetpki.services.ports import Store, UnitOfWork
from fleetpki.store.hub_models import HubDevice

__all__ = [
    "AuthType",
    "ConnectionChange",
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
        device_id: the registry id (and, for certificateAuthority, the certificate CN).
        auth_type: certificateAuthority (default), selfSigned or sas.
        primary_thumbprint / secondary_thumbprint: for selfSigned devices.
        primary_key / secondary_key: for sas devices (base64); generated when not given.
        status / status_reason: enabled or disabled, and why.
    """

    device_id: str
    auth_type: AuthType = AuthType.CERTIFICATE_AUTHORITY
    primary_thumbprint: str | None = None
    secondary_thumbprint: str | None = None
    status: DeviceStatus = DeviceStatus.ENABLED
    status_reason: str | None = None
    primary_key: str | None = dataclasses.field(default=None, repr=False)
    secondary_key: str | None = dataclasses.field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ConnectionChange:
    """A device connected (``connected``) or disconnected at ``at``, as an MQTT server saw it.

    ``session`` names the connection (unique to it, the same for its connect and its
    disconnect) and ``order`` is the session's order among the hub nodes (the
    announcement's outbox id, `fleetpki.services.hub_nodes`; 0 when not announced). A
    disconnect without a ``session`` is recorded whoever holds the device.
    """

    device_id: str
    connected: bool
    at: dt.datetime
    session: str | None = None
    order: int = 0


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
    primary_key: str | None = dataclasses.field(repr=False)
    secondary_key: str | None = dataclasses.field(repr=False)
    created_at: dt.datetime
    status_updated_at: dt.datetime
    connection_state: str
    connection_state_updated_at: dt.datetime | None
    last_activity_at: dt.datetime | None
    c2d_count: int


def device_view(record: HubDevice, seal: DeviceKeySeal | None = None) -> HubDeviceView:
    """The view of a registry entry (call inside the unit of work that read it).

    A sas device's keys are in it only when ``seal`` is given to open them.
    """
    primary, secondary = device_keys(record, seal) if seal is not None else (None, None)
    return HubDeviceView(
        device_id=record.device_id,
        generation_id=record.generation_id,
        etag=record.etag,
        status=record.status,
        status_reason=record.status_reason,
        auth_type=record.auth_type,
        primary_thumbprint=record.primary_thumbprint,
        secondary_thumbprint=record.secondary_thumbprint,
        primary_key=primary,
        secondary_key=secondary,
        created_at=record.created_at,
        status_updated_at=record.status_updated_at,
        connection_state=record.connection_state,
        connection_state_updated_at=record.connection_state_updated_at,
        last_activity_at=record.last_activity_at,
        c2d_count=record.c2d_count,
    )


def device_keys(record: HubDevice, seal: DeviceKeySeal) -> tuple[str | None, str | None]:
    """A sas device's primary and secondary keys, opened; ``(None, None)`` for others.

    Raises:
        AuthenticationError: ``hub.device_key_undecryptable``.
    """
    return (
        seal.open(record.primary_key) if record.primary_key else None,
        seal.open(record.secondary_key) if record.secondary_key else None,
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


def _clean_key(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    cleaned = value.strip()
    if not is_valid_key(cleaned):
        raise ValidationError(
            "hub.bad_symmetric_key", "a symmetric key is base64 of 16 to 64 bytes"
        )
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
    tx: UnitOfWork,
    spec: DeviceSpec,
    *,
    now: dt.datetime,
    seal: DeviceKeySeal,
    if_match: str | None = None,
) -> tuple[HubDevice, bool]:
    """:meth:`HubDeviceService.put` inside the caller's unit of work (returns the record)."""
    _check_device_id(spec.device_id)
    sas = spec.auth_type is AuthType.SAS
    primary = None if sas else _clean_thumbprint(spec.primary_thumbprint)
    secondary = None if sas else _clean_thumbprint(spec.secondary_thumbprint)
    if spec.auth_type is AuthType.SELF_SIGNED and not (primary or secondary):
        raise ValidationError(
            "hub.thumbprint_required", "a selfSigned device needs a primary or secondary thumbprint"
        )
    # Keys only mean something for sas devices; for the others they are dropped.
    given = (_clean_key(spec.primary_key), _clean_key(spec.secondary_key)) if sas else None
    record = tx.hub_devices.get(spec.device_id, for_update=True)
    if record is None:
        if if_match is not None and if_match.strip().strip('"') != "*":
            raise NotFoundError("hub.device_not_found", f"no device {spec.device_id!r} in the hub")
        keys = (given[0] or generate_key(), given[1] or generate_key()) if given else None
        record = HubDevice(
            device_id=spec.device_id,
            status=spec.status.value,
            status_reason=spec.status_reason,
            auth_type=spec.auth_type.value,
            primary_thumbprint=primary,
            secondary_thumbprint=secondary,
            primary_key=seal.seal(keys[0]) if keys else None,
            secondary_key=seal.seal(keys[1]) if keys else None,
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
    _replace_credentials(tx, record, spec.auth_type, given, seal, now)
    record.auth_type = spec.auth_type.value
    record.primary_thumbprint = primary
    record.secondary_thumbprint = secondary
    record.etag = new_etag()
    return record, False


def _replace_credentials(
    tx: UnitOfWork,
    record: HubDevice,
    auth_type: AuthType,
    given: tuple[str | None, str | None] | None,
    seal: DeviceKeySeal,
    now: dt.datetime,
) -> None:
    """Set an updated device's keys; end the sessions whose credential is gone.

    ``given`` is ``None`` for a device that is not sas (its keys go), else the keys the
    caller named: each one named replaces the old one, each one not named is kept (or
    generated, for a device that was not sas before).
    """
    old = [k for k in device_keys(record, seal) if k]
    if given is None:
        new: list[str] = []
    else:
        was_sas = record.auth_type == AuthType.SAS.value and len(old) == 2
        kept = old if was_sas else [generate_key(), generate_key()]
        new = [given[0] or kept[0], given[1] or kept[1]]
    record.primary_key = seal.seal(new[0]) if new else None
    record.secondary_key = seal.seal(new[1]) if new else None
    if given is not None and record.auth_type != AuthType.SAS.value:
        # From a certificate to keys: no session made with a certificate may go on.
        # (Between the two X.509 kinds sessions stay, as before: a hub link pins a
        # device to its newest certificate without cutting it off.)
        tell_hub_nodes(tx, DeviceBlocked(record.device_id, "hub.wrong_auth_type"), at=now)
    removed = frozenset(key_id(k) for k in old) - {key_id(k) for k in new}
    if removed:
        tell_hub_nodes(tx, DeviceKeysReplaced(record.device_id, removed), at=now)


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


def record_connections_in(
    tx: UnitOfWork,
    changes: Sequence[ConnectionChange],
    *,
    node: str | None = None,
    routing: EventRouting | None = None,
) -> None:
    """:meth:`HubDeviceService.record_connections` inside the caller's unit of work."""
    for change in changes:
        # Strictly later than the device's previous change, so its events' sequence
        # numbers strictly increase even if the clock steps back; None when the change
        # is stale (a late disconnect from a connection the device has left): no event.
        at = tx.hub_devices.record_connection(
            change.device_id,
            connected=change.connected,
            at=change.at,
            node=node,
            session=change.session,
            order=change.order,
        )
        if at is not None:
            route_connection_state_in(
                tx, routing, change.device_id, connected=change.connected, at=at
            )


class HubDeviceService:
    """Device identities of the built-in hub (ref §3.2, §3.3).

    Args:
        store: the database.
        clock: the source of "now".
        seal: seals and opens sas devices' keys.
        routing: which events reach the built-in endpoint (connection state events).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        seal: DeviceKeySeal,
        routing: EventRouting | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._seal = seal
        self._routing = routing

    def put(self, spec: DeviceSpec, *, if_match: str | None = None) -> tuple[HubDeviceView, bool]:
        """Create or update a device (ref §3.2 PUT ``/devices/{id}``, §3.3 etags).

        Returns the entry (with a sas device's keys) and whether it was created. Without
        ``If-Match`` an existing device is a conflict; with one it must match the
        device's etag (``*`` matches). Disabling a device, or turning an X.509 device
        into a sas one, closes its live session after commit; replacing or removing a
        sas device's key closes the sessions that key signed.

        Raises:
            ValidationError: ``hub.bad_device_id``, ``hub.bad_thumbprint``,
                ``hub.bad_symmetric_key``, ``hub.thumbprint_required``.
            ConflictError: ``hub.device_exists`` (409), ``precondition.failed`` (412).
            NotFoundError: ``hub.device_not_found`` for an update with an etag of a
                missing device.
        """
        with self._store.transaction() as tx:
            record, created = put_device_in(
                tx, spec, now=self._clock(), seal=self._seal, if_match=if_match
            )
            return device_view(record, self._seal), created

    def get(self, device_id: str) -> HubDeviceView:
        """The registry entry of ``device_id``.

        Raises:
            NotFoundError: ``hub.device_not_found``.
        """
        with self._store.reading() as tx:
            return device_view(require_device(tx, device_id), self._seal)

    def list(self, *, limit: int | None = None, offset: int = 0) -> list[HubDeviceView]:
        """Registered devices by id, at most ``limit``, after the first ``offset``."""
        with self._store.reading() as tx:
            return [
                device_view(r, self._seal)
                for r in tx.hub_devices.list(limit=limit, offset=max(offset, 0))
            ]

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
            return device_view(record, self._seal)

    def delete(self, device_id: str, *, if_match: str | None = None) -> None:
        """Remove a device and its queued messages; its live session is closed after commit.

        Raises:
            NotFoundError: ``hub.device_not_found``.
            ConflictError: ``precondition.failed``.
        """
        with self._store.transaction() as tx:
            delete_device_in(tx, device_id, now=self._clock(), if_match=if_match)

    def connection_string(self, device_id: str, hostname: str, *, secondary: bool = False) -> str:
        """``HostName=..;DeviceId=..;SharedAccessKey=..`` for a sas device (its primary key).

        ``hostname`` must be the name alone: the device SDK dials it on 8883 (or 443)
        and takes no port (ref §0).

        Raises:
            NotFoundError: ``hub.device_not_found``.
            ValidationError: ``hub.not_a_sas_device``, ``hub.bad_hostname``.
        """
        if not hostname or any(c in hostname for c in ":/;= "):
            raise ValidationError(
                "hub.bad_hostname", "the HostName of a device connection string has no port"
            )
        with self._store.transaction() as tx:
            record = require_device(tx, device_id)
            primary, second = device_keys(record, self._seal)
        key = second if secondary else primary
        if record.auth_type != AuthType.SAS.value or key is None:
            raise ValidationError(
                "hub.not_a_sas_device",
                f"device {device_id!r} authenticates with {record.auth_type}, not a key",
            )
        return f"HostName={hostname};DeviceId={device_id};SharedAccessKey={key}"

    def record_connections(
        self, changes: Sequence[ConnectionChange], *, node: str | None = None
    ) -> None:
        """Record devices connecting and disconnecting, in order, in one unit of work.

        Sets ``connectionState``, ``connectionStateUpdatedTime`` and ``lastActivityTime``
        (each change strictly later than the device's previous one) and, when routed,
        stores a device connection state event. A device deleted meanwhile is ignored.

        The changes were seen by hub node ``node``. A connect records the node and its
        session as the one holding the device; a disconnect is recorded only while that
        node and session still are (a device that has moved to another node stays
        Connected when the node it left notices late), and a connect of a session older
        than the one recorded as connected (by the nodes' order) is ignored. A change
        ignored so writes nothing: no time, no event.
        """
        if not changes:
            return
        with self._store.transaction() as tx:
            record_connections_in(tx, changes, node=node, routing=self._routing)
