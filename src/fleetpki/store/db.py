"""The database: engine set-up for SQLite and PostgreSQL, migrations, sessions."""

from __future__ import annotations

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
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from fleetpki.errors import ValidationError

__all__ = ["Database", "sqlite_url"]

_MIGRATIONS = Path(__file__).parent / "migrations"


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite database file."""
    return f"sqlite:///{path}"


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
        """A session whose transaction commits on success and rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
