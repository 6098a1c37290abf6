"""The throwaway PostgreSQL helper: start a cluster, use it for real, stop it leaving nothing."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psycopg
import pytest

from support.postgres import find_pg_bin_dir, start_postgres

pytestmark = pytest.mark.postgres


def _port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # A zombie has exited: where init does not reap orphans, the postmaster lingers as one.
    return stat.rsplit(")", 1)[-1].split()[0] not in {"Z", "X"}


def test_find_pg_bin_dir_has_the_server_programs() -> None:
    bin_dir = find_pg_bin_dir()
    for name in ("initdb", "pg_ctl", "postgres"):
        assert os.access(bin_dir / name, os.X_OK), name


def test_start_use_and_stop(tmp_path: Path) -> None:
    server = start_postgres(tmp_path)
    try:
        assert server.url == (
            f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/fleetpki_test"
        )
        assert _port_accepts(server.port)
        pid = (server.data_dir / "postmaster.pid").read_text().splitlines()[0]
        postmaster = int(pid)

        with psycopg.connect(server.dsn) as conn:
            conn.execute("CREATE TABLE t (id integer PRIMARY KEY, name text NOT NULL)")
            conn.execute("INSERT INTO t VALUES (%s, %s), (%s, %s)", (1, "one", 2, "two"))
            conn.commit()
        with psycopg.connect(server.dsn) as conn:
            rows = conn.execute("SELECT id, name FROM t ORDER BY id").fetchall()
            settings: dict[str, str] = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                    (["fsync", "synchronous_commit", "full_page_writes", "listen_addresses"],),
                ).fetchall()
            )
        assert rows == [(1, "one"), (2, "two")]
        assert settings == {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "listen_addresses": "127.0.0.1",
        }
    finally:
        server.stop()

    assert not _port_accepts(server.port)
    assert not _pid_alive(postmaster)
    if os.geteuid() == 0:
        # The cluster had its own directory under /tmp, removed at stop; its log is kept.
        assert not server.base_dir.exists()
        assert (tmp_path / "postgres.log").is_file()
    else:
        assert server.base_dir.is_relative_to(tmp_path)
    server.stop()  # a second stop is harmless


def test_create_database_is_isolated(tmp_path: Path) -> None:
    with start_postgres(tmp_path) as server:
        url = server.create_database("isolated_one")
        assert url == f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/isolated_one"
        with psycopg.connect(server.dsn_for("isolated_one")) as conn:
            conn.execute("CREATE TABLE only_here (x integer)")
            conn.commit()
        with psycopg.connect(server.dsn) as conn:
            found = conn.execute("SELECT to_regclass('only_here') IS NOT NULL").fetchone()
        assert found == (False,)
        server.drop_database("isolated_one")
        with pytest.raises(ValueError, match="database name"):
            server.create_database("Robert'); DROP TABLE students;--")
    assert not _port_accepts(server.port)


def test_halt_and_resume_keep_the_data_and_the_port(tmp_path: Path) -> None:
    with start_postgres(tmp_path) as server:
        with psycopg.connect(server.dsn) as conn:
            conn.execute("CREATE TABLE kept (x integer)")
            conn.execute("INSERT INTO kept VALUES (7)")
            conn.commit()
        server.halt()
        assert not _port_accepts(server.port)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(server.dsn, connect_timeout=5)
        server.resume()
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT x FROM kept").fetchall() == [(7,)]
