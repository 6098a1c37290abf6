"""Statements compiled once per dialect and run on the unit of work's DBAPI connection.

The hot paths (issuance, the API-token check) run a handful of small statements per
request. Through SQLAlchemy each costs 50-150 µs of CPU before the driver is called
(the execution context, the result object, the ORM's identity map): on an issuance
that was about half of the service call, against a few µs for the driver itself
(bench/README.md). A :class:`Prepared` is built from a Core statement, so its SQL,
its parameters' order and its column types come from the same table definitions as
every other statement; it is compiled once for the dialect, converts each parameter
and each result column with the SQLAlchemy types' own bind and result processors
(so a value is stored exactly as the ORM would store it: naive UTC timestamps, JSON
text), and runs on the DBAPI connection of the session's transaction, inside the
same unit of work. A driver error is raised as SQLAlchemy's own exception type
(:class:`sqlalchemy.exc.DBAPIError` and its subclasses), as through the engine, so
the store's handling of unavailability and conflicts applies unchanged.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Insert, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement

from fleetpki.store.db import refuse_write_when_reading

__all__ = ["Prepared", "PreparedInsert", "prepared", "prepared_insert"]

_Processor = Callable[[Any], Any] | None


class Prepared:
    """One statement compiled for one dialect, with its parameter and column processors.

    Args:
        statement: a Core SELECT, INSERT, UPDATE or DELETE whose parameters are named
            ``bindparam`` s (or, for an INSERT, columns).
        dialect: the engine's dialect.
        column_keys: for an INSERT, the columns it sets.
        writes: the statement changes rows (refused in a reading unit of work).
    """

    def __init__(
        self,
        statement: ClauseElement,
        dialect: Dialect,
        *,
        column_keys: Sequence[str] | None = None,
        writes: bool = False,
    ) -> None:
        compiled = statement.compile(
            dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None
        )
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        self.writes = writes
        self._dialect = dialect
        self._dbapi_error: type[Exception] = dialect.loaded_dbapi.Error
        names = list(compiled.positiontup or ()) if compiled.positional else list(compiled.binds)
        self._names = names
        self._positional = bool(compiled.positional)
        binds = compiled.binds
        # (name, processor, value): a literal of the statement (``role == "requester"``)
        # carries its value; a named bindparam (or an INSERT's column) takes the caller's.
        self._bind: list[tuple[str, _Processor, Any]] = [
            (
                name,
                binds[name].type.dialect_impl(dialect).bind_processor(dialect),
                _REQUIRED if binds[name].required else binds[name].value,
            )
            for name in (names if self._positional else binds)
        ]
        columns: Sequence[ColumnElement[Any]] = getattr(statement, "selected_columns", ())
        if not columns:
            returning = getattr(statement, "_returning", ())
            columns = list(returning)
        self._results: list[_Processor] = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]
        self._converts = any(p is not None for p in self._results)

    def _parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        converted: list[Any] | dict[str, Any] = [] if self._positional else {}
        for name, processor, literal in self._bind:
            value = values[name] if literal is _REQUIRED else values.get(name, literal)
            if processor is not None:
                value = processor(value)
            if isinstance(converted, list):
                converted.append(value)
            else:
                converted[name] = value
        return converted

    def _run(self, session: Session, values: Mapping[str, Any]) -> Any:
        connection = session.connection()
        if self.writes:
            # The engine's guard (store.db), which the driver's cursor does not pass.
            refuse_write_when_reading(connection, self.sql)
        raw = connection.connection.driver_connection
        assert raw is not None
        cursor = raw.cursor()
        parameters = self._parameters(values)
        try:
            cursor.execute(self.sql, parameters)
        except self._dbapi_error as exc:
            cursor.close()
            disconnected = self._dialect.is_disconnect(exc, raw, cursor)  # type: ignore[arg-type]
            if disconnected:
                connection.invalidate(exc)
            raise DBAPIError.instance(
                self.sql,
                parameters,
                exc,
                self._dbapi_error,
                connection_invalidated=disconnected,
                dialect=self._dialect,
            ) from exc
        return cursor

    def _row(self, row: Sequence[Any]) -> tuple[Any, ...]:
        if not self._converts:
            return tuple(row)
        return tuple(
            value if processor is None else processor(value)
            for processor, value in zip(self._results, row, strict=True)
        )

    def first(self, session: Session, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row (its columns converted), or ``None``."""
        cursor = self._run(session, values)
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else self._row(row)

    def all(self, session: Session, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row, its columns converted."""
        cursor = self._run(session, values)
        try:
            rows = cursor.fetchall()
        finally:
            cursor.close()
        return [self._row(row) for row in rows]

    def execute(self, session: Session, values: Mapping[str, Any]) -> int:
        """Run a statement that returns no rows; the number of rows it changed."""
        cursor = self._run(session, values)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()


class PreparedInsert:
    """An INSERT of one table's row with every column given, compiled once per dialect.

    Columns the caller leaves out take their scalar Python default (``default=...``)
    or NULL; a table with a callable or server-side default, which only the engine
    computes, is not taken (:func:`prepared_insert` returns ``None`` for it).
    """

    def __init__(self, table: Table, dialect: Dialect) -> None:
        (primary,) = table.primary_key.columns
        #: The database generates the primary key (an integer one), which is left out.
        self.generates_key: bool = primary.autoincrement is True or (
            primary.autoincrement == "auto" and primary.type.python_type is int
        )
        self._generated = self.generates_key
        keys = [c.key for c in table.columns if not (self._generated and c is primary)]
        self.columns = tuple(keys)
        self._defaults = {
            c.key: getattr(c.default, "arg", None) for c in table.columns if c.key in keys
        }
        statement: Insert = insert(table)
        if self._generated:
            statement = statement.returning(primary)
        self._statement = Prepared(statement, dialect, column_keys=keys, writes=True)

    def run(self, session: Session, values: Mapping[str, Any]) -> Any:
        """INSERT the row; its generated primary key, or ``None`` when none is generated."""
        row = {key: values.get(key, self._defaults[key]) for key in self.columns}
        if not self._generated:
            self._statement.execute(session, row)
            return None
        returned = self._statement.first(session, row)
        assert returned is not None
        return returned[0]


class _Required:
    def __repr__(self) -> str:
        return "<required>"


_REQUIRED: Any = _Required()


# Compiled statements by (statement, dialect name): the statements are module-level
# constants of the repositories, compiled on first use in each process. The entry
# holds the statement itself, so its id cannot be reused by another object.
_compiled: dict[tuple[int, str], tuple[ClauseElement, Prepared]] = {}
_lock = threading.Lock()


def prepared(statement: ClauseElement, session: Session) -> Prepared:
    """``statement`` (a module-level constant) compiled for the dialect of ``session``'s
    database, once per process."""
    dialect = session.get_bind().dialect
    key = (id(statement), dialect.name)
    entry = _compiled.get(key)
    if entry is None:
        entry = (
            statement,
            Prepared(statement, dialect, writes=not hasattr(statement, "selected_columns")),
        )
        with _lock:
            entry = _compiled.setdefault(key, entry)
    return entry[1]


@functools.cache
def _insert_for(table: Table, dialect_name: str, dialect: Dialect) -> PreparedInsert | None:
    if len(table.primary_key.columns) != 1:
        return None
    for column in table.columns:
        default = getattr(column.default, "arg", None)
        if callable(default) or (column.server_default is not None and column.default is None):
            return None  # computed by the engine or the database: not taken here
    return PreparedInsert(table, dialect)


def prepared_insert(table: Table, session: Session) -> PreparedInsert | None:
    """The INSERT of ``table`` for ``session``'s dialect, or ``None`` for a table with
    defaults only the engine computes."""
    dialect = session.get_bind().dialect
    return _insert_for(table, dialect.name, dialect)
