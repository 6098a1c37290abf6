"""A throwaway PostgreSQL cluster for the tests: initdb, start on a free loopback port, stop.

``start_postgres(tmp_dir)`` finds the server binaries (``initdb``, ``pg_ctl``; on the PATH,
else the newest ``/usr/lib/postgresql/<version>/bin`` where Debian keeps them), creates a
cluster with trust authentication, starts it on a free TCP port of 127.0.0.1 with its unix
socket beside the data, durability off for speed, and creates a database.

PostgreSQL refuses to run as root. Under euid 0 the cluster belongs to an unprivileged user
(the ``postgres`` system user of the Debian package, else ``nobody``) and the binaries run as
that user through ``runuser`` (or ``setpriv``). Pytest's temporary directories under
``/tmp/pytest-of-root`` are mode 0700, which that user cannot traverse, so the cluster then
lives in a directory of its own under ``/tmp`` (``tempfile.mkdtemp``) that ``stop()`` removes;
the server log is copied into ``tmp_dir`` when the server stops. Run as any other user, the
cluster lives in ``tmp_dir`` itself (when its socket path fits the unix limit).

``halt()`` and ``resume()`` stop and start the same cluster on the same port, for the
tests of a database outage. ``stop()`` shuts the server down at once (``pg_ctl stop -m immediate``, then signals to the
postmaster if that fails) and is registered with ``atexit`` too, so no server outlives the
test session.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

__all__ = [
    "PostgresError",
    "PostgresServer",
    "find_pg_bin_dir",
    "start_postgres",
]

SUPERUSER = "postgres"
DEFAULT_DATABASE = "fleetpki_test"
# The users a cluster may belong to when the tests run as root, in order of preference.
_UNPRIVILEGED_USERS = ("postgres", "nobody")
_DEBIAN_PG_GLOB = "/usr/lib/postgresql/*/bin"
_START_TIMEOUT_SECONDS = 60
_STOP_TIMEOUT_SECONDS = 30
_START_ATTEMPTS = 3
# sun_path is 108 bytes; PostgreSQL adds "/.s.PGSQL.<port>.lock" to the socket directory.
_MAX_SOCKET_DIR_LENGTH = 80
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresError(RuntimeError):
    """The throwaway PostgreSQL server could not be set up, started or used."""


def _is_server_bin_dir(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _version_key(directory: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: compare versions numerically (9.6 < 15 < 16).
    return tuple(int(part) for part in re.findall(r"\d+", directory.parent.name))


def find_pg_bin_dir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    ``FLEETPKI_PG_BIN`` wins when set; then the directory of ``initdb`` found on the PATH
    (symlinks resolved, since ``pg_ctl`` looks for ``postgres`` beside its real self); then the
    newest ``/usr/lib/postgresql/<version>/bin``.

    Raises:
        PostgresError: when no such directory exists (run scripts/ensure-system-deps.sh).
    """
    override = os.environ.get("FLEETPKI_PG_BIN")
    if override:
        directory = Path(override)
        if not _is_server_bin_dir(directory):
            raise PostgresError(f"FLEETPKI_PG_BIN={override} lacks initdb, pg_ctl or postgres")
        return directory
    on_path = shutil.which("initdb")
    if on_path is not None and shutil.which("pg_ctl") is not None:
        directory = Path(on_path).resolve().parent
        if _is_server_bin_dir(directory):
            return directory
    candidates = [d for d in Path("/").glob(_DEBIAN_PG_GLOB.lstrip("/")) if _is_server_bin_dir(d)]
    if candidates:
        return max(candidates, key=_version_key)
    raise PostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on the PATH nor in "
        f"{_DEBIAN_PG_GLOB}: run scripts/ensure-system-deps.sh"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _unprivileged_user() -> pwd.struct_passwd:
    for name in _UNPRIVILEGED_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresError(
        f"running as root, and none of the users {', '.join(_UNPRIVILEGED_USERS)} exists "
        "to own the PostgreSQL cluster"
    )


def _as_user_prefix(user: pwd.struct_passwd) -> list[str]:
    runuser = shutil.which("runuser")
    if runuser is not None:
        return [runuser, "-u", user.pw_name, "--"]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [
            setpriv,
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--init-groups",
            "--",
        ]
    raise PostgresError("running as root, and neither runuser nor setpriv is available")


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie counts as gone (in containers whose init does not reap
    orphans, the postmaster's exited process lingers as one after pg_ctl has left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state follows the parenthesised command name, which may itself hold ") ".
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in {"Z", "X"}


def _quote_conf(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _check_identifier(name: str) -> None:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain lower-case database name: {name!r}")


class PostgresServer:
    """A running throwaway cluster; see :func:`start_postgres`.

    Attributes:
        host: always ``127.0.0.1``.
        port: the TCP port it listens on.
        user: the superuser to connect as (trust authentication, no password).
        database: the database created at start.
        data_dir: the cluster's data directory.
        socket_dir: the directory of its unix socket.
        log_path: the server log (while it runs; copied to ``tmp_dir`` at stop).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        bin_dir: Path,
        base_dir: Path,
        owns_base_dir: bool,
        tmp_dir: Path,
        as_user: list[str],
        port: int,
        database: str,
    ) -> None:
        self.bin_dir = bin_dir
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.socket_dir = base_dir / "run"
        self.log_path = base_dir / "postgres.log"
        self.port = port
        self.user = SUPERUSER
        self.database = database
        self._owns_base_dir = owns_base_dir
        self._tmp_dir = tmp_dir
        self._as_user = as_user
        self._running = False

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the default database (``postgresql+psycopg://...``)."""
        return self.url_for(self.database)

    @property
    def dsn(self) -> str:
        """libpq connection URI of the default database, for ``psycopg.connect``."""
        return self.dsn_for(self.database)

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def dsn_for(self, database: str) -> str:
        """libpq connection URI of ``database`` on this server."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    # -- databases -------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create the empty database ``name`` and return its SQLAlchemy URL.

        Raises:
            ValueError: when ``name`` is not a plain lower-case identifier.
            psycopg.errors.DuplicateDatabase: when it exists already.
        """
        _check_identifier(name)
        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, closing its connections first; a missing database is no error."""
        _check_identifier(name)
        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # -- life cycle ------------------------------------------------------------------------

    def _run(self, tool: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_user, str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.base_dir,
            env=_server_env(),
        )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def _init(self) -> None:
        result = self._run(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
            timeout=120,
        )
        if result.returncode != 0:
            raise PostgresError(f"initdb failed ({result.returncode}):\n{result.stderr}")
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "logging_collector": "off",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# fleetpki test settings\n")
            for key, value in settings.items():
                conf.write(f"{key} = {_quote_conf(value)}\n")

    def _start(self) -> None:
        result = self._run(
            "pg_ctl",
            "start",
            "--pgdata",
            str(self.data_dir),
            "--log",
            str(self.log_path),
            "--wait",
            "--timeout",
            str(_START_TIMEOUT_SECONDS),
            "-o",
            f"-p {self.port}",
            timeout=_START_TIMEOUT_SECONDS + 15,
        )
        if result.returncode != 0:
            self._kill_postmaster()
            raise PostgresError(
                f"pg_ctl start failed ({result.returncode}) on port {self.port}:\n"
                f"{result.stderr}\n{self._log_tail()}"
            )
        self._running = True

    def _postmaster_pid(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            return int(first_line)
        except (OSError, IndexError, ValueError):
            return None

    def _kill_postmaster(self) -> None:
        """Last resort: SIGQUIT (immediate shutdown) to the postmaster, then SIGKILL."""
        pid = self._postmaster_pid()
        if pid is None:
            return
        for sig, grace in ((signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            if not _process_alive(pid):
                return
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if not _process_alive(pid):
                    return
                time.sleep(0.05)

    def halt(self, mode: str = "fast") -> None:
        """Stop the server but keep its cluster, as an outage would: :meth:`resume` restarts it.

        ``fast`` ends every session and refuses new ones (a planned restart); ``immediate``
        is a crash for the clients. Connections already open get an error at their next use.
        """
        if not self._running:
            return
        result = self._run(
            "pg_ctl",
            "stop",
            "--pgdata",
            str(self.data_dir),
            "--mode",
            mode,
            "--wait",
            "--timeout",
            str(_STOP_TIMEOUT_SECONDS),
            timeout=_STOP_TIMEOUT_SECONDS + 15,
        )
        if result.returncode != 0:
            self._kill_postmaster()
        self._running = False

    def resume(self) -> None:
        """Start a halted server again on the same port and data; returns once it answers.

        Raises:
            PostgresError: when it does not start (the port was taken meanwhile, say).
        """
        if not self._running:
            self._start()

    def stop(self) -> None:
        """Stop the server at once and remove what it left; safe to call more than once."""
        atexit.unregister(self.stop)
        if self._running:
            self._running = False
            try:
                result = self._run(
                    "pg_ctl",
                    "stop",
                    "--pgdata",
                    str(self.data_dir),
                    "--mode",
                    "immediate",
                    "--wait",
                    "--timeout",
                    str(_STOP_TIMEOUT_SECONDS),
                    timeout=_STOP_TIMEOUT_SECONDS + 15,
                )
                stopped = result.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                stopped = False
            if not stopped:
                self._kill_postmaster()
        self._cleanup()

    def _cleanup(self) -> None:
        if not self._owns_base_dir:
            return
        with contextlib.suppress(OSError):
            if self.log_path.exists() and self._tmp_dir.is_dir():
                shutil.copyfile(self.log_path, self._tmp_dir / "postgres.log")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<PostgresServer {self.url} {state} data={self.data_dir}>"


def _server_env() -> dict[str, str]:
    # libpq/server variables from the caller's shell must not redirect the throwaway server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _base_dir(tmp_dir: Path, run_as_root: bool) -> tuple[Path, bool]:
    """Where the cluster lives, and whether it is ours to remove at stop."""
    if not run_as_root:
        candidate = tmp_dir / "pg"
        if len(str(candidate / "run")) <= _MAX_SOCKET_DIR_LENGTH:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate, False
    return Path(tempfile.mkdtemp(prefix="fleetpki-pg-", dir="/tmp")), True


def start_postgres(tmp_dir: Path, database: str = DEFAULT_DATABASE) -> PostgresServer:
    """Create and start a throwaway cluster with an empty ``database``; see the module doc.

    Call :meth:`PostgresServer.stop` when done (it also runs at interpreter exit).

    Raises:
        PostgresError: when the binaries are missing or the server does not start.
    """
    _check_identifier(database)
    bin_dir = find_pg_bin_dir()
    run_as_root = os.geteuid() == 0
    as_user: list[str] = []
    owner: pwd.struct_passwd | None = None
    if run_as_root:
        owner = _unprivileged_user()
        as_user = _as_user_prefix(owner)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    base_dir, owns_base_dir = _base_dir(tmp_dir, run_as_root)
    (base_dir / "run").mkdir(mode=0o700)
    if owner is not None:
        # mkdtemp made it 0700 root: hand the whole tree to the cluster's owner.
        for path in (base_dir, base_dir / "run"):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    server = PostgresServer(
        bin_dir=bin_dir,
        base_dir=base_dir,
        owns_base_dir=owns_base_dir,
        tmp_dir=tmp_dir,
        as_user=as_user,
        port=_free_port(),
        database=database,
    )
    atexit.register(server.stop)
    try:
        server._init()
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                server._start()
                break
            except PostgresError:
                # Most likely the free port was taken in between: try another one.
                if attempt == _START_ATTEMPTS:
                    raise
                server.port = _free_port()
        server.create_database(database)
    except BaseException:
        server.stop()
        raise
    return server
