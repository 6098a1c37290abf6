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
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
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
from fleetpki.store.sqlite_write_gate import SqliteWriteGate

__all__ = [
    "DATABASE_UNAVAILABLE",
    "DEFAULT_SQLITE_BUSY_TIMEOUT",
    "Database",
    "is_unavailable",
    "refuse_write_when_reading",
    "sqlite_url",
]

#: The code of the error a unit of work fails with while the database does not answer.
DATABASE_UNAVAILABLE = "database.unavailable"

# SQLite primary result codes that mean "not now", not "wrong": SQLITE_BUSY, SQLITE_LOCKED,
# SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_PROTOCOL (sqlite.org/rescode.html).
_SQLITE_UNAVAILABLE = frozenset({5, 6, 10, 13, 14, 15})
# PostgreSQL SQLSTATE classes and codes of the same kind (Appendix A of its manual):
# 08 connection exception, 53 insufficient resources, 57P01-57P03 shutdown or starting.
_PG_UNAVAILABLE_CLASSES = ("08", "53")
_PG_UNAVAILABLE_CODES = frozenset({"57P01", "57P02", "57P03"})
# Database.wait_until_answers: the first pause between tries, doubled up to the last.
_FIRST_CONNECT_PAUSE = 0.5
_MAX_CONNECT_PAUSE = 5.0
# Seconds a PostgreSQL connection attempt may take (libpq's connect_timeout) unless the
# URL says otherwise: without it a server whose packets are dropped holds every
# connect for the kernel's TCP timeout (about two minutes).
_PG_CONNECT_TIMEOUT = 10


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


# What a PostgreSQL server that answers a connection with FATAL says when waiting may
# cure it (it is starting, stopping or full). Any other FATAL at connect (no such
# database or role, a wrong password, pg_hba.conf) is a refusal: psycopg gives such
# errors no SQLSTATE, so only their text tells them apart.
_PG_FATAL_FOR_NOW = (
    "the database system is",
    "too many clients",
    "connection slots are reserved",
)


def _is_refusal(exc: BaseException) -> bool:
    """Whether connecting failed because the server answered no, for good."""
    if not isinstance(exc, OperationalError):
        return False
    text = str(exc.orig)
    return "FATAL:" in text and not any(phrase in text for phrase in _PG_FATAL_FOR_NOW)


_MIGRATIONS = Path(__file__).parent / "migrations"


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite database file."""
    return f"sqlite:///{path}"


# What SQLite adds to a database file's name for its write-ahead log and shared memory.
_COMPANIONS = ("-wal", "-shm", "-journal", "-writer.lock")
# The WAL-index header at the start of the -shm file: 48 bytes that every committed
# transaction changes (iChange, mxFrame, the checksums; sqlite.org/walformat.html §2.1).
_WAL_INDEX_HEADER = 48


def _sqlite_commit_stamp(path: Path) -> bytes:
    """Bytes that differ after any process commits to the SQLite database at ``path``.

    The WAL-index header when the database is in WAL mode (the default here, see the
    connect hook); else the database file's size and modification time.
    A read that races a writer may see a torn header: a spurious change, never a
    missed one, since a commit has rewritten the header before it returns.
    """
    try:
        fd = os.open(f"{path}-shm", os.O_RDONLY)
    except OSError:
        pass
    else:
        try:
            header = os.pread(fd, _WAL_INDEX_HEADER, 0)
        finally:
            os.close(fd)
        if len(header) == _WAL_INDEX_HEADER:
            return header
    try:
        info = path.stat()
    except OSError:
        return b""
    return f"{info.st_size}:{info.st_mtime_ns}".encode()


class _CommitStamp:
    """:func:`_sqlite_commit_stamp` with the -shm file kept open between reads.

    A read is then one ``fstat`` and one ``pread`` (not an ``open`` and a ``close``
    besides, which cost the OCSP responder, which reads the stamp on every request,
    a few microseconds each). SQLite deletes the -shm file when the last connection
    closes and the next one makes a new file: a kept descriptor whose file has no link
    left is dropped and the path opened again, so a read never looks at a file that
    SQLite no longer writes.
    """

    __slots__ = ("_fd", "_lock", "_path")

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    def read(self) -> bytes:
        fd = self._fd
        if fd is not None:
            try:
                if os.fstat(fd).st_nlink > 0:
                    header = os.pread(fd, _WAL_INDEX_HEADER, 0)
                    if len(header) == _WAL_INDEX_HEADER:
                        return header
            except OSError:
                pass
        with self._lock:
            self._close()
            with contextlib.suppress(OSError):
                self._fd = os.open(f"{self._path}-shm", os.O_RDONLY | os.O_CLOEXEC)
        return _sqlite_commit_stamp(self._path)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


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


#: How long a SQLite writer waits for another one's lock before the unit of work fails
#: with ``database.unavailable`` (seconds; the ``sqlite_busy_timeout_seconds`` setting).
DEFAULT_SQLITE_BUSY_TIMEOUT = 10.0


def _sqlite_connect_hook(busy_timeout: float) -> Any:
    milliseconds = round(busy_timeout * 1000)

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers run beside the one writer; foreign keys are off by default
        # in SQLite; a busy timeout makes concurrent writers wait instead of failing.
        # The driver's own transaction handling is turned off: it would begin a
        # transaction only at the first write, so a unit of work's reads would run
        # outside it (see _begin_sqlite).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={milliseconds:d}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # A million certificates make indexes of ~200 MB that issuance inserts into at
        # random (serials, thumbprints): read them through a shared memory map instead
        # of each connection's 2 MB page cache.
        cursor.execute("PRAGMA mmap_size=1073741824")
        cursor.close()

    return on_connect


def _on_postgresql_connect(dbapi_connection: Any, _record: Any) -> None:
    # A commit is the promise behind a certificate handed out and a PUBACK sent: with
    # synchronous_commit off (a server-wide setting some tune for speed) PostgreSQL
    # answers COMMIT before the WAL is written, and a crash then loses certificates the
    # clients already hold. Each session turns it back on; a stronger setting (remote
    # write or apply, for replicas) is left as the operator chose it.
    cursor = dbapi_connection.cursor()
    cursor.execute("SHOW synchronous_commit")
    row = cursor.fetchone()
    if row is not None and row[0] == "off":
        cursor.execute("SET synchronous_commit TO on")
    cursor.close()
    dbapi_connection.commit()


# How many SQLite connections the pool keeps open. More than the threads that use the
# database at once (the API's worker threads), so that a busy moment does not open and
# close overflow connections, each paying the PRAGMAs and a read of the schema.
_SQLITE_POOL_SIZE = 40
# The statements that take SQLite's write lock (a transaction's first one begins it).
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
# The execution option that marks a reading unit of work's connection (Database.session).
_READING = "fleetpki_reading"


def _begin_sqlite(connection: Any) -> None:
    # A writing unit of work takes SQLite's write lock when it begins (BEGIN IMMEDIATE),
    # waiting up to the busy timeout for another writer, in this process or another
    # (``fleetpki serve --workers``). A deferred transaction would read a snapshot and
    # then fail with SQLITE_BUSY at its first write if another connection committed
    # meanwhile (the busy timeout does not apply to that upgrade), and pysqlite's
    # default leaves the reads before the first write outside the transaction, so a
    # read-modify-write (a twin merge, a counter) could lose another's update.
    # Units of work are short and never wait on the network, so serialising the writing
    # ones costs little next to SQLite's single writer. A reading unit (an OCSP answer,
    # a GET) begins a deferred transaction: one snapshot, no lock, beside any writer.
    # On the driver's connection: through the engine, the statement cost about as much
    # CPU as a prepared INSERT of the issuance (store.prepared). A driver error is raised
    # as SQLAlchemy's, as through the engine, so that is_unavailable sees a busy lock.
    statement = "BEGIN" if connection.get_execution_options().get(_READING) else "BEGIN IMMEDIATE"
    raw = connection.connection.driver_connection
    try:
        raw.execute(statement)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(
            statement, (), exc, sqlite3.Error, dialect=connection.dialect
        ) from exc


def refuse_write_when_reading(conn: Any, statement: str) -> None:
    """Refuse a write on the connection of a reading unit of work.

    A write in a reading unit would upgrade its snapshot to the write lock without the
    wait that BEGIN IMMEDIATE gives (SQLITE_BUSY once another process committed): a bug
    in the caller, said here rather than as a rare 503 under load.

    Raises:
        RuntimeError: for an INSERT, UPDATE, DELETE or REPLACE in a reading unit.
    """
    if conn.get_execution_options().get(_READING) and statement.lstrip()[:7].upper().startswith(
        _WRITES
    ):
        raise RuntimeError(f"a reading unit of work may not write: {statement[:60]!r}")


def _refuse_writes_when_reading(
    conn: Any, _cursor: Any, statement: str, *_args: Any, **_kwargs: Any
) -> None:
    refuse_write_when_reading(conn, statement)


class Database:
    """One database: an engine, its migrations and a session factory.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg://...``).
        sqlite_busy_timeout: on SQLite, seconds a writer waits for another process's
            lock before its unit of work fails with ``database.unavailable``.

    Raises:
        ValidationError: ``database.bad_url`` for a URL SQLAlchemy cannot use.
    """

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        sqlite_busy_timeout: float = DEFAULT_SQLITE_BUSY_TIMEOUT,
    ) -> None:
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
            if "connect_timeout" not in parsed.query:
                kwargs["connect_args"] = {"connect_timeout": _PG_CONNECT_TIMEOUT}
        sqlite_file = self.dialect == "sqlite" and parsed.database not in (None, "", ":memory:")
        if sqlite_file:
            _own_sqlite_files(Path(str(parsed.database)))
            kwargs.update(
                pool_size=_SQLITE_POOL_SIZE, max_overflow=_SQLITE_POOL_SIZE, pool_use_lifo=True
            )
        self.engine: Engine = create_engine(parsed, **kwargs)
        self._write_gate: SqliteWriteGate | None = None
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_connect_hook(sqlite_busy_timeout))
            event.listen(self.engine, "begin", _begin_sqlite)
            event.listen(self.engine, "before_cursor_execute", _refuse_writes_when_reading)
            self._write_gate = SqliteWriteGate(
                Path(str(parsed.database)) if sqlite_file else None, sqlite_busy_timeout
            )
        else:
            event.listen(self.engine, "connect", _on_postgresql_connect)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._sqlite_path = Path(str(parsed.database)) if sqlite_file else None
        self._stamp = _CommitStamp(self._sqlite_path) if self._sqlite_path else None

    def commit_stamp(self) -> bytes | None:
        """A value that changes whenever any process commits, cheap enough for every read.

        On a SQLite file it reads a few bytes of the WAL index (no query, no lock);
        on PostgreSQL (and in-memory SQLite) it is ``None``: the database cannot say
        cheaply, and readers rely on LISTEN/NOTIFY (:mod:`fleetpki.store.notify`).
        """
        if self._stamp is None:
            return None
        return self._stamp.read()

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
            ValidationError: ``database.unreachable`` when the server cannot be reached,
                ``database.refused`` when it refuses (see :meth:`wait_until_answers`).
        """
        cfg = self._alembic_config()
        try:
            with self.engine.begin() as connection:
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
        except OperationalError as exc:
            raise self._connect_error(exc) from exc

    def wait_until_answers(
        self,
        timeout: float,
        *,
        on_retry: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Connect once, and while the database does not answer (:func:`is_unavailable`:
        refused, unreachable, starting up) try again with backoff for up to ``timeout``
        seconds, for a server started together with its database.

        A SQLite file is tried once: there is no server to wait for, and a lock held by
        another process is waited for by the busy timeout already.

        Args:
            timeout: seconds to keep trying a PostgreSQL server (0: one try).
            on_retry: called with a one-line message before each pause.
            sleep: pauses between tries (the tests' seam).
            monotonic: the clock the deadline is on.

        Raises:
            ValidationError: ``database.unreachable`` when it still does not answer at
                the deadline; ``database.refused`` at once when it answers with what
                waiting does not cure (a wrong password, no such database). The message
                names the URL without its password, and the cause.
        """
        if self.dialect == "sqlite":
            timeout = 0.0
        deadline = monotonic() + timeout
        pause = _FIRST_CONNECT_PAUSE
        tries = 1
        while True:
            try:
                with self.engine.connect():
                    return
            except (DBAPIError, PoolTimeoutError) as exc:
                left = deadline - monotonic()
                if not is_unavailable(exc) or _is_refusal(exc) or left <= 0:
                    tried = f" ({tries} tries in {timeout:g} s)" if tries > 1 else ""
                    raise self._connect_error(exc, tried) from exc
                pause = min(pause, left)
                if on_retry is not None:
                    on_retry(
                        f"the database at {self.safe_url} does not answer "
                        f"({self._cause(exc)}); trying again in {pause:.1f} s, "
                        f"for {left:.1f} s more"
                    )
                sleep(pause)
                pause = min(pause * 2, _MAX_CONNECT_PAUSE)
                tries += 1

    def _cause(self, exc: BaseException) -> str:
        """The first line of the driver's message, without the URL's password."""
        original = getattr(exc, "orig", None) or exc
        lines = str(original).strip().splitlines()
        text = lines[0].strip().removeprefix("connection failed: ") if lines else ""
        password = self.engine.url.password
        if password:
            text = text.replace(str(password), "***")
        return text[:300] or type(original).__name__

    def _connect_error(self, exc: BaseException, tried: str = "") -> ValidationError:
        """The error that stops a start: unreachable (for now), or refused."""
        cause = self._cause(exc)
        if is_unavailable(exc) and not _is_refusal(exc):
            return ValidationError(
                "database.unreachable",
                f"cannot reach the database at {self.safe_url}: {cause}{tried}",
            )
        return ValidationError(
            "database.refused", f"the database at {self.safe_url} refused the connection: {cause}"
        )

    def current_revision(self) -> str | None:
        """The schema revision stored in the database, or ``None`` when empty."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_revision(self) -> str | None:
        """The newest revision among the shipped migrations."""
        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    @contextmanager
    def session(self, *, reading: bool = False) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error.

        Args:
            reading: the unit of work only reads. On SQLite it then reads one snapshot
                beside any writer, takes no write lock and may not write; otherwise it
                takes the write lock when it begins (``BEGIN IMMEDIATE``, see
                ``_begin_sqlite``), after the other writers of this process and of
                other fleetpki processes (:class:`SqliteWriteGate`). On PostgreSQL
                both are the same.

        Raises:
            UnavailableError: ``database.unavailable`` when the database does not answer
                (:func:`is_unavailable`); nothing was committed.
        """
        gate = None if reading else self._write_gate
        try:
            if gate is not None:
                gate.enter()
            try:
                with self._sessions() as session, session.begin():
                    if self._write_gate is not None:
                        # Begun now, so that _begin_sqlite knows which kind it is.
                        session.connection(execution_options={_READING: reading})
                    yield session
            finally:
                if gate is not None:
                    gate.leave()
        except (DBAPIError, PoolTimeoutError) as exc:
            if not is_unavailable(exc):
                raise
            raise UnavailableError(
                DATABASE_UNAVAILABLE, "the database is unavailable; try again shortly"
            ) from exc

    def dispose(self) -> None:
        """Close every pooled connection (and the file the commit stamp is read from)."""
        self.engine.dispose()
        if self._stamp is not None:
            self._stamp.close()
        if self._write_gate is not None:
            self._write_gate.close()
