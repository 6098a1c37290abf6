"""The database: engine set-up for SQLite and PostgreSQL, migrations, sessions.

A database that does not answer (PostgreSQL stopped or restarting, a SQLite file locked
by another process past the busy timeout, a full disk) fails the unit of work with
:class:`~fleetpki.errors.UnavailableError` ``database.unavailable`` (HTTP 503), the one
error every caller (the API, the hub, the workers) can tell from a bug; the pool
reconnects by itself once the server is back (``pool_pre_ping`` on PostgreSQL).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from fleetpki.errors import UnavailableError, ValidationError

__all__ = ["DATABASE_UNAVAILABLE", "Database", "is_unavailable", "sqlite_url"]

#: The code of the error a unit of work fails with while the database does not answer.
DATABASE_UNAVAILABLE = "database.unavailable"

# SQLite primary result codes that mean "not now", not "wrong": SQLITE_BUSY, SQLITE_LOCKED,
# SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_PROTOCOL (sqlite.org/rescode.html).
_SQLITE_UNAVAILABLE = frozenset({5, 6, 10, 13, 14, 15})
# PostgreSQL SQLSTATE classes and codes of the same kind (Appendix A of its manual):
# 08 connection exception, 53 insufficient resources, 57P01-57P03 shutdown or starting.
_PG_UNAVAILABLE_CLASSES = ("08", "53")
_PG_UNAVAILABLE_CODES = frozenset({"57P01", "57P02", "57P03"})


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (from SQLAlchemy) says the database is unreachable or busy for now.

    A missing table or a constraint violation is not: those are bugs or conflicts, and
    stay what they are.
    """
    if isinstance(exc, PoolTimeoutError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True  # SQLAlchemy's own judgement: the connection was lost
    original = exc.orig
    sqlite_code = getattr(original, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        return sqlite_code & 0xFF in _SQLITE_UNAVAILABLE
    if not isinstance(exc, OperationalError):
        return False
    sqlstate = getattr(original, "sqlstate", None)
    if sqlstate is None:
        return True  # psycopg: no answer from a server at all (refused, closed, timed out)
    return sqlstate.startswith(_PG_UNAVAILABLE_CLASSES) or sqlstate in _PG_UNAVAILABLE_CODES


_MIGRATIONS = Path(__file__).parent / "migrations"


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite database file."""
    return f"sqlite:///{path}"


# What SQLite adds to a database file's name for its write-ahead log and shared memory.
_COMPANIONS = ("-wal", "-shm", "-journal")


def _own_sqlite_files(path: Path) -> None:
    """Make the database file (and its -wal, -shm) readable by the owner only.

    SQLite creates the -wal and -shm files with the mode of the database file, so a
    database file made 0600 before SQLite first opens it keeps all three private. An
    existing home whose files were made under the umask (0644) is put right here.
    """
    # An existing file, or a folder that does not exist (SQLite then says so), is not
    # created here.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, *(path.with_name(path.name + suffix) for suffix in _COMPANIONS)):
        # Not ours to change (a database shared with another user): left as it is.
        with contextlib.suppress(OSError):
            if stat.S_IMODE(file.stat().st_mode) & 0o077:
                file.chmod(0o600)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; foreign keys are off by default
    # in SQLite; a busy timeout makes concurrent writers wait instead of failing.
    # The driver's own transaction handling is turned off: it would begin a
    # transaction only at the first write, so a unit of work's reads would run
    # outside it (see _begin_sqlite).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin_sqlite(connection: Any) -> None:
    # Every unit of work takes SQLite's write lock when it begins (BEGIN IMMEDIATE),
    # waiting up to the busy timeout for another writer, in this process or another
    # (``fleetpki serve --workers``). A deferred transaction would read a snapshot and
    # then fail with SQLITE_BUSY at its first write if another connection committed
    # meanwhile (the busy timeout does not apply to that upgrade), and pysqlite's
    # default leaves the reads before the first write outside the transaction, so a
    # read-modify-write (a twin merge, a counter) could lose another's update.
    # Units of work are short and never wait on the network, so serialising them costs
    # little next to SQLite's single writer.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """One database: an engine, its migrations and a session factory.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg://...``).

    Raises:
        ValidationError: ``database.bad_url`` for a URL SQLAlchemy cannot use.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ValidationError("database.bad_url", "the database URL cannot be parsed") from exc
        self.dialect = parsed.get_backend_name()
        if self.dialect not in {"sqlite", "postgresql"}:
            raise ValidationError(
                "database.bad_url",
                f"unsupported database {self.dialect!r}: use sqlite or postgresql",
            )
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "postgresql":
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        if self.dialect == "sqlite" and parsed.database not in (None, "", ":memory:"):
            _own_sqlite_files(Path(parsed.database))
        self.engine: Engine = create_engine(parsed, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _on_sqlite_connect)
            event.listen(self.engine, "begin", _begin_sqlite)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for logs and messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def _alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        return cfg

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision.

        Raises:
            ValidationError: ``database.unreachable`` when the server cannot be reached.
        """
        cfg = self._alembic_config()
        try:
            with self.engine.begin() as connection:
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
        except OperationalError as exc:
            raise ValidationError(
                "database.unreachable", f"cannot reach the database at {self.safe_url}"
            ) from exc

    def current_revision(self) -> str | None:
        """The schema revision stored in the database, or ``None`` when empty."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_revision(self) -> str | None:
        """The newest revision among the shipped migrations."""
        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error.

        Raises:
            UnavailableError: ``database.unavailable`` when the database does not answer
                (:func:`is_unavailable`); nothing was committed.
        """
        try:
            with self._sessions() as session, session.begin():
                yield session
        except (DBAPIError, PoolTimeoutError) as exc:
            if not is_unavailable(exc):
                raise
            raise UnavailableError(
                DATABASE_UNAVAILABLE, "the database is unavailable; try again shortly"
            ) from exc

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
