"""The hub's repositories on SQL: devices with twins, hub CAs, telemetry, C2D, SAS policies."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    CursorResult,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session

from fleetpki.services.ports.hub import TelemetryInput
from fleetpki.store.hub_models import (
    HubC2DMessage,
    HubCA,
    HubDevice,
    HubLinkPin,
    HubMessage,
    HubSasPolicy,
)
from fleetpki.store.models import AuditEntry, CARecord

__all__ = [
    "SqlHubAuditTrail",
    "SqlHubC2DRepository",
    "SqlHubCARepository",
    "SqlHubDeviceRepository",
    "SqlHubLinkPinRepository",
    "SqlHubSasPolicyRepository",
    "SqlHubTelemetryRepository",
]

#: The most telemetry rows one page returns.
_MAX_PAGE = 1000


# A hub connect's look-up (HubDeviceRepository.auth_facts): the columns it needs, not
# the twin's JSON, on the connection without the ORM's loading.
_AUTH_FACTS = select(
    HubDevice.device_id,
    HubDevice.status,
    HubDevice.auth_type,
    HubDevice.primary_thumbprint,
    HubDevice.secondary_thumbprint,
).where(HubDevice.device_id == bindparam("device_id"))
# A device's connection state (HubDeviceRepository.record_connection): Core statements
# built once, for every connect and disconnect. Each kind of change has a rule that says
# whether it applies to the row as it is (`_CONNECT_APPLIES`, `_DISCONNECT_APPLIES`),
# and three statements built on it (`_ConnectionStatements`): the one UPDATE of the
# usual case (it applies, and is later than the previous change), the look-up when
# that changed nothing, and the UPDATE at a later time (a clock that stepped back).
_devices = cast("Table", HubDevice.__table__)
_c = _devices.c
_b_at: BindParameter[dt.datetime] = bindparam("b_at")
_b_order = bindparam("b_order", type_=Integer)
#: A connect applies unless the device is recorded as connected in a session that the
#: hub nodes ordered after this one (both announced: orders above 0, the outbox's ids).
_CONNECT_APPLIES = or_(
    _c.connection_state != "Connected",
    _b_order == 0,
    _c.connection_order <= _b_order,
)
#: A disconnect applies only to the connection recorded as connected: a late one from a
#: node (or a connection) the device has left changes nothing.
_DISCONNECT_APPLIES = and_(
    _c.connection_state == "Connected",
    # IS NOT DISTINCT FROM (SQLite: IS): changes recorded without a node name match too.
    _c.connection_node.is_not_distinct_from(bindparam("b_node", type_=String)),
    _c.connection_session == bindparam("b_session", type_=String),
)


class _ConnectionStatements:
    """The statements of one kind of connection change (see above)."""

    def __init__(self, applies: ColumnElement[bool], connected: bool) -> None:
        values: dict[str, Any] = {
            "connection_state": "Connected" if connected else "Disconnected",
            "connection_state_updated_at": _b_at,
            "last_activity_at": _b_at,
        }
        if connected:
            values |= {
                "connection_node": bindparam("b_node"),
                "connection_session": bindparam("b_session"),
                "connection_order": _b_order,
            }
        at_any_time = (
            update(_devices).where(_c.device_id == bindparam("b_device"), applies).values(**values)
        )
        self.if_later = at_any_time.where(
            or_(_c.connection_state_updated_at.is_(None), _c.connection_state_updated_at < _b_at)
        )
        self.at_any_time = at_any_time
        self.look_up = select(_c.connection_state_updated_at, applies.label("applies")).where(
            _c.device_id == bindparam("b_device")
        )


_CONNECT = _ConnectionStatements(_CONNECT_APPLIES, connected=True)
_DISCONNECT = _ConnectionStatements(_DISCONNECT_APPLIES, connected=False)
# A disconnect that names no connection (a backend that tracks none) always applies.
_DISCONNECT_ANY = _ConnectionStatements(true(), connected=False)
# Every connect checks the trust stamp (HubCARepository.stamp).
_TRUST_STAMP = select(HubCA.id, HubCA.etag, HubCA.is_verified).order_by(HubCA.id)


class SqlHubDeviceRepository:
    """:class:`fleetpki.services.ports.hub.HubDeviceRepository` on one session."""

    def __init__(self, session: Session, dialect: str = "sqlite") -> None:
        self._session = session
        self._dialect = dialect

    def get(self, device_id: str, *, for_update: bool = False) -> HubDevice | None:
        """See :meth:`HubDeviceRepository.get`.

        ``for_update`` is ``SELECT ... FOR UPDATE`` on PostgreSQL (refreshing a row
        this session already holds); SQLite's units of work hold its write lock anyway.
        """
        if for_update and self._dialect == "postgresql":
            return self._session.get(
                HubDevice, device_id, with_for_update=True, populate_existing=True
            )
        return self._session.get(HubDevice, device_id)

    def auth_facts(self, device_id: str) -> tuple[str, str, str, str | None, str | None] | None:
        """See :meth:`HubDeviceRepository.auth_facts` (a Core statement, built once)."""
        row = self._session.connection().execute(_AUTH_FACTS, {"device_id": device_id}).first()
        return None if row is None else (row[0], row[1], row[2], row[3], row[4])

    def list(self, *, limit: int | None = None, offset: int = 0) -> Sequence[HubDevice]:
        """See :meth:`HubDeviceRepository.list`."""
        query = select(HubDevice).order_by(HubDevice.device_id)
        if offset > 0:
            query = query.offset(offset)
        if limit is not None:
            query = query.limit(limit)
        return list(self._session.scalars(query))

    def add(self, device: HubDevice) -> None:
        """See :meth:`HubDeviceRepository.add`."""
        self._session.add(device)
        self._session.flush()

    def delete(self, device: HubDevice) -> None:
        """See :meth:`HubDeviceRepository.delete`."""
        self._session.delete(device)
        self._session.flush()

    def count_by_status(self) -> Mapping[str, int]:
        """See :meth:`HubDeviceRepository.count_by_status`."""
        query = select(HubDevice.status, func.count()).group_by(HubDevice.status)
        return {str(status): int(count) for status, count in self._session.execute(query).all()}

    def record_connection(
        self,
        device_id: str,
        *,
        connected: bool,
        at: dt.datetime,
        node: str | None = None,
        session: str | None = None,
        order: int = 0,
    ) -> dt.datetime | None:
        """See :meth:`HubDeviceRepository.record_connection`."""
        if connected:
            statements = _CONNECT
        else:
            statements = _DISCONNECT if session is not None else _DISCONNECT_ANY
        connection = self._session.connection()
        values = {
            "b_device": device_id,
            "b_at": at,
            "b_node": node,
            "b_session": session,
            "b_order": order,
        }
        # One statement in the usual case: the change applies and is later than the last.
        if cast("CursorResult[Any]", connection.execute(statements.if_later, values)).rowcount:
            return at
        look_up = statements.look_up
        if self._dialect == "postgresql":
            look_up = look_up.with_for_update()  # the row stays as read until the UPDATE
        row = connection.execute(look_up, values).first()
        if row is None or not row.applies:
            return None  # no such device, or a stale change (the rules above)
        previous: dt.datetime | None = row.connection_state_updated_at
        later = at if previous is None or previous < at else previous + dt.timedelta(microseconds=1)
        connection.execute(statements.at_any_time, {**values, "b_at": later})
        return later

    def count_connected(self) -> int:
        """See :meth:`HubDeviceRepository.count_connected`."""
        query = select(func.count()).where(HubDevice.connection_state == "Connected")
        return int(self._session.scalar(query) or 0)


class SqlHubCARepository:
    """:class:`fleetpki.services.ports.hub.HubCARepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get_by_name(self, name: str) -> HubCA | None:
        """See :meth:`HubCARepository.get_by_name`."""
        return self._session.scalar(select(HubCA).where(HubCA.name == name))

    def find_by_sha1(self, sha1_hex: str) -> HubCA | None:
        """See :meth:`HubCARepository.find_by_sha1`."""
        return self._session.scalar(select(HubCA).where(HubCA.sha1_hex == sha1_hex))

    def list(self) -> Sequence[HubCA]:
        """See :meth:`HubCARepository.list`."""
        return list(self._session.scalars(select(HubCA).order_by(HubCA.name)))

    def add(self, ca: HubCA) -> None:
        """See :meth:`HubCARepository.add`."""
        self._session.add(ca)
        self._session.flush()

    def delete(self, ca: HubCA) -> None:
        """See :meth:`HubCARepository.delete`."""
        self._session.delete(ca)
        self._session.flush()

    def stamp(self) -> Hashable:
        """See :meth:`HubCARepository.stamp`.

        Every hub CA's id, etag and verified flag: each trust change gives a new etag
        or adds or removes a row, so the stamp does not depend on clocks.
        """
        rows = self._session.connection().execute(_TRUST_STAMP).all()
        return tuple(tuple(row) for row in rows)

    def local_ca(self, ca_id: str) -> CARecord | None:
        """See :meth:`HubCARepository.local_ca`."""
        return self._session.get(CARecord, ca_id)


def _naive_utc(value: dt.datetime) -> dt.datetime:
    """``value`` as the naive UTC time stored (`fleetpki.store.models.UTCDateTime`'s rule)."""
    if value.tzinfo is None:
        raise ValueError("naive datetimes are not stored; pass an aware UTC datetime")
    if value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    return value.replace(tzinfo=None)


def _sqlite_time(value: dt.datetime) -> str:
    """The text SQLAlchemy's SQLite ``DATETIME`` stores for ``value`` (naive UTC)."""
    if value.tzinfo is dt.UTC:  # the hub's own times: "YYYY-MM-DD HH:MM:SS.ffffff+00:00"
        return value.isoformat(" ", "microseconds")[:26]
    return _naive_utc(value).isoformat(" ", "microseconds")


def _json_text(value: Mapping[str, Any]) -> str:
    """The JSON column's text, as SQLAlchemy's ``JSON`` type writes it (``json.dumps``)."""
    return json.dumps(value) if value else "{}"


_TELEMETRY_INSERT = (
    "INSERT INTO hub_messages"
    " (device_id, module_id, enqueued_at, body, system_properties, properties) VALUES "
)
_TELEMETRY_COLUMNS = 6
# PostgreSQL (psycopg): one executemany, which psycopg sends as one pipeline.
_POSTGRESQL_INSERT = _TELEMETRY_INSERT + "(%s, %s, %s, %s, %s, %s)"
# SQLite: multi-row INSERTs of at most this many rows (6 parameters each: within the
# 32,766 SQLite allows since 3.32, or the 999 of older ones), sized 512 (128), 256, ...,
# 1 so that the driver's statement cache keeps them all. Against executemany (a step of
# one row each, the interpreter's lock let go and taken back around every one) this
# cost ~5.4 instead of ~7 µs of CPU per row in process, indexes and commit included.
_SQLITE_CHUNK = 512 if sqlite3.sqlite_version_info >= (3, 32) else 128
_SQLITE_INSERTS = {
    rows: _TELEMETRY_INSERT + ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    for rows in (_SQLITE_CHUNK >> shift for shift in range(_SQLITE_CHUNK.bit_length()))
}


class SqlHubTelemetryRepository:
    """:class:`fleetpki.services.ports.hub.HubTelemetryRepository` on one session.

    ``add_batch`` is the hub's hot path (every QoS 1 telemetry message before its
    PUBACK): it encodes the rows itself, as the mapped types would (the times as naive
    UTC, SQLite's as SQLAlchemy's ``DATETIME`` text; the property maps as JSON), and
    hands them straight to the driver, without SQLAlchemy's per-row ORM and type
    processing; the reads go through the ORM.
    """

    def __init__(self, session: Session, dialect: str = "sqlite") -> None:
        self._session = session
        self._dialect = dialect

    def add_batch(self, batch: Sequence[TelemetryInput]) -> None:
        """See :meth:`HubTelemetryRepository.add_batch`: a few statements, one transaction."""
        if not batch:
            return
        connection = self._session.connection()
        json_text = _json_text
        if self._dialect != "sqlite":
            rows = [
                (
                    item.device_id,
                    item.module_id,
                    _naive_utc(item.enqueued_at),
                    item.body,
                    json_text(item.system_properties),
                    json_text(item.properties),
                )
                for item in batch
            ]
            connection.exec_driver_sql(_POSTGRESQL_INSERT, rows)
            return
        values: list[Any] = []
        add = values.extend
        time = _sqlite_time
        # The hub gives the messages of one read the same time object: formatted once.
        last_time: dt.datetime | None = None
        text = ""
        for item in batch:
            if item.enqueued_at is not last_time:
                last_time = item.enqueued_at
                text = time(last_time)
            system, application = item.system_properties, item.properties
            add(
                (
                    item.device_id,
                    item.module_id,
                    text,
                    item.body,
                    json_text(system) if system else "{}",
                    json_text(application) if application else "{}",
                )
            )
        done, total = 0, len(batch)
        size = _SQLITE_CHUNK
        while done < total:
            while size > total - done:
                size >>= 1
            connection.exec_driver_sql(
                _SQLITE_INSERTS[size],
                tuple(values[done * _TELEMETRY_COLUMNS : (done + size) * _TELEMETRY_COLUMNS]),
            )
            done += size

    def list(
        self, *, device_id: str | None, after_id: int | None, limit: int
    ) -> Sequence[HubMessage]:
        """See :meth:`HubTelemetryRepository.list`."""
        query = select(HubMessage).order_by(HubMessage.id).limit(max(1, min(limit, _MAX_PAGE)))
        if device_id is not None:
            query = query.where(HubMessage.device_id == device_id)
        if after_id is not None:
            query = query.where(HubMessage.id > after_id)
        return list(self._session.scalars(query))

    def recent(self, device_id: str, limit: int) -> Sequence[HubMessage]:
        """See :meth:`HubTelemetryRepository.recent`."""
        query = (
            select(HubMessage)
            .where(HubMessage.device_id == device_id)
            .order_by(HubMessage.id.desc())
            .limit(max(1, min(limit, _MAX_PAGE)))
        )
        return list(self._session.scalars(query))

    def latest_id(self, device_id: str | None) -> int:
        """See :meth:`HubTelemetryRepository.latest_id`."""
        query = select(func.max(HubMessage.id))
        if device_id is not None:
            query = query.where(HubMessage.device_id == device_id)
        return int(self._session.scalar(query) or 0)

    def last_id_at(self, at: dt.datetime) -> int:
        """See :meth:`HubTelemetryRepository.last_id_at`."""
        query = select(func.max(HubMessage.id)).where(HubMessage.enqueued_at <= at)
        return int(self._session.scalar(query) or 0)

    def first(self) -> HubMessage | None:
        """See :meth:`HubTelemetryRepository.first`."""
        return self._session.scalar(select(HubMessage).order_by(HubMessage.id).limit(1))


class SqlHubC2DRepository:
    """:class:`fleetpki.services.ports.hub.HubC2DRepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, message: HubC2DMessage) -> None:
        """See :meth:`HubC2DRepository.add`."""
        self._session.add(message)
        self._session.flush()

    def pending(self, device_id: str) -> Sequence[HubC2DMessage]:
        """See :meth:`HubC2DRepository.pending`."""
        query = (
            select(HubC2DMessage)
            .where(HubC2DMessage.device_id == device_id, HubC2DMessage.status == "pending")
            .order_by(HubC2DMessage.id)
        )
        return list(self._session.scalars(query))

    def find_pending(self, device_id: str, message_id: str) -> HubC2DMessage | None:
        """See :meth:`HubC2DRepository.find_pending`."""
        return self._session.scalar(
            select(HubC2DMessage).where(
                HubC2DMessage.device_id == device_id,
                HubC2DMessage.message_id == message_id,
                HubC2DMessage.status == "pending",
            )
        )

    def delete_for_device(self, device_id: str) -> None:
        """See :meth:`HubC2DRepository.delete_for_device`."""
        self._session.execute(delete(HubC2DMessage).where(HubC2DMessage.device_id == device_id))

    def feedback_due(self, limit: int) -> Sequence[HubC2DMessage]:
        """See :meth:`HubC2DRepository.feedback_due`."""
        query = (
            select(HubC2DMessage)
            .where(HubC2DMessage.feedback_due.is_(True))
            .order_by(HubC2DMessage.id)
            .limit(max(1, min(limit, _MAX_PAGE)))
        )
        return list(self._session.scalars(query))

    def by_ids(self, ids: Sequence[int]) -> Sequence[HubC2DMessage]:
        """See :meth:`HubC2DRepository.by_ids`."""
        if not ids:
            return []
        return list(self._session.scalars(select(HubC2DMessage).where(HubC2DMessage.id.in_(ids))))


class SqlHubSasPolicyRepository:
    """:class:`fleetpki.services.ports.hub.HubSasPolicyRepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def names(self) -> frozenset[str]:
        """See :meth:`HubSasPolicyRepository.names`."""
        return frozenset(self._session.scalars(select(HubSasPolicy.name)))

    def get(self, name: str) -> HubSasPolicy | None:
        """See :meth:`HubSasPolicyRepository.get`."""
        return self._session.get(HubSasPolicy, name)

    def add(self, policy: HubSasPolicy) -> None:
        """See :meth:`HubSasPolicyRepository.add`."""
        self._session.add(policy)
        self._session.flush()


class SqlHubAuditTrail:
    """:class:`fleetpki.services.ports.hub.HubAuditTrail` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def record(
        self,
        *,
        actor_id: str,
        source: str,
        action: str,
        object_type: str,
        object_id: str,
        at: dt.datetime,
        details: Mapping[str, Any],
    ) -> None:
        """See :meth:`HubAuditTrail.record`."""
        self._session.add(
            AuditEntry(
                at=at,
                actor_id=actor_id,
                action=action,
                object_type=object_type,
                object_id=object_id,
                source=source[:128],
                details=dict(details),
            )
        )


class SqlHubLinkPinRepository:
    """:class:`fleetpki.services.ports.hub.HubLinkPinRepository` on one session."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, link_name: str, device_id: str) -> HubLinkPin | None:
        """See :meth:`HubLinkPinRepository.get`."""
        return self._session.get(HubLinkPin, (link_name, device_id))

    def add(self, pin: HubLinkPin) -> None:
        """See :meth:`HubLinkPinRepository.add`."""
        self._session.add(pin)
        self._session.flush()

    def delete(self, pin: HubLinkPin) -> None:
        """See :meth:`HubLinkPinRepository.delete`."""
        self._session.delete(pin)
        self._session.flush()

    def due(self, link_name: str, now: dt.datetime) -> Sequence[HubLinkPin]:
        """See :meth:`HubLinkPinRepository.due`."""
        query = select(HubLinkPin).where(HubLinkPin.link_name == link_name, HubLinkPin.until <= now)
        return list(self._session.scalars(query.order_by(HubLinkPin.device_id)))

    def for_link(self, link_name: str) -> Sequence[HubLinkPin]:
        """See :meth:`HubLinkPinRepository.for_link`."""
        query = select(HubLinkPin).where(HubLinkPin.link_name == link_name)
        return list(self._session.scalars(query.order_by(HubLinkPin.device_id)))
