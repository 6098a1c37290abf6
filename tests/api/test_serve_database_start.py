"""``fleetpki serve`` started while its database does not answer: it waits, then serves or exits 1.

Each test runs ``python -m fleetpki serve`` in its own process, as an operator (or
systemd) does. A database nothing listens on: serve says it is waiting, with the URL
(password hidden) and the cause, tries again with backoff for
``database_start_wait_seconds`` (or ``--database-wait``), then exits 1 with one error
line; one that refuses (no such database) stops it at once; one that comes up during
the wait is served. A SQLite file is tried once.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from fleetpki.errors import ValidationError
from fleetpki.settings import Settings
from support.postgres import PostgresServer, start_postgres
from support.serve_process import (
    free_port,
    prepare_home,
    serve_environment,
    serve_process,
)

PASSWORD = "pw-Never-Printed-7"
# A subprocess that retried when it should not would outlive this, failing the test.
_RUN_TIMEOUT = 120


def _point_at(home: Path, url: str, **changes: object) -> None:
    Settings.load(home).with_changes(database_url=url, **changes).save()


def _serve(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetpki", "--home", str(home), "serve", *args],
        env=serve_environment(),
        capture_output=True,
        text=True,
        timeout=_RUN_TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--workers", "2"],
        ["--only", "hub"],
        ["--only", "ca", "--database-wait", "1.5"],  # the flag, over the configuration
    ],
    ids=["plain", "workers", "hub", "flag"],
)
def test_serve_gives_up_on_a_database_nothing_answers(
    tmp_path: Path, key_passphrase: None, args: list[str]
) -> None:
    prepared = prepare_home(tmp_path, None, [])
    port = free_port()  # nothing listens on it
    url = f"postgresql+psycopg://fleet:{PASSWORD}@127.0.0.1:{port}/fleet"
    wait = 3600 if "--database-wait" in args else 1.5
    _point_at(prepared.home, url, database_start_wait_seconds=wait)

    result = _serve(prepared.home, *args)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert PASSWORD not in output
    shown = f"postgresql+psycopg://fleet:***@127.0.0.1:{port}/fleet"
    waiting = [line for line in result.stderr.splitlines() if line.startswith("waiting: ")]
    assert waiting, output
    assert all(shown in line and "Connection refused" in line for line in waiting), output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach the database at {shown}: "), output
    assert "Connection refused" in last and last.endswith("(database.unreachable)"), output
    assert "Traceback" not in output


def test_serve_with_no_wait_tries_once(tmp_path: Path, key_passphrase: None) -> None:
    prepared = prepare_home(tmp_path, None, [])
    port = free_port()
    _point_at(prepared.home, f"postgresql+psycopg://fleet:{PASSWORD}@127.0.0.1:{port}/fleet")

    result = _serve(prepared.home, "--only", "hub", "--database-wait", "0")

    assert result.returncode == 1, result.stderr
    assert "waiting: " not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("(database.unreachable)")
    assert PASSWORD not in result.stdout + result.stderr


def test_a_sqlite_file_is_tried_once(tmp_path: Path, key_passphrase: None) -> None:
    prepared = prepare_home(tmp_path, None, [])
    _point_at(prepared.home, f"sqlite:///{tmp_path / 'no-such-folder' / 'fleetpki.db'}")

    result = _serve(prepared.home, "--only", "hub", "--database-wait", "3600")

    assert result.returncode == 1, result.stderr
    assert "waiting: " not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "unable to open database file" in last, result.stderr
    assert last.endswith("(database.unreachable)")


@pytest.mark.parametrize("value", [-1, True, "60", 3601])
def test_a_bad_start_wait_is_refused(tmp_path: Path, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.default_for(tmp_path).with_changes(database_start_wait_seconds=value)
    assert info.value.code == "config.invalid"
    assert "database_start_wait_seconds" in info.value.message


def test_a_negative_wait_flag_is_a_usage_error(tmp_path: Path, key_passphrase: None) -> None:
    prepared = prepare_home(tmp_path, None, [])
    result = _serve(prepared.home, "--only", "hub", "--database-wait", "-1")
    assert result.returncode == 2, result.stderr
    assert "--database-wait" in result.stderr


@pytest.mark.postgres
def test_serve_stops_at_once_when_the_database_refuses(
    tmp_path: Path, postgres: PostgresServer, key_passphrase: None
) -> None:
    prepared = prepare_home(tmp_path, None, [])
    # The server answers, and says the database does not exist: waiting cannot cure it.
    missing = (
        f"postgresql+psycopg://{postgres.user}:{PASSWORD}@{postgres.host}:{postgres.port}"
        "/no_such_database"
    )
    _point_at(prepared.home, missing)

    result = _serve(prepared.home, "--only", "hub", "--database-wait", "3600")

    assert result.returncode == 1, result.stderr
    assert "waiting: " not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the database at "), result.stderr
    assert "no_such_database" in last and "does not exist" in last, result.stderr
    assert last.endswith("(database.refused)")
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.postgres
def test_serve_waits_for_a_database_that_comes_up(tmp_path: Path, key_passphrase: None) -> None:
    server = start_postgres(tmp_path / "pg")  # private: halting it touches no other test
    try:
        (tmp_path / "serve").mkdir()
        prepared = prepare_home(tmp_path / "serve", server.url, [], database_start_wait_seconds=120)
        server.halt()
        resumed = threading.Event()

        def bring_back_once_waiting() -> None:
            deadline = time.monotonic() + _RUN_TIMEOUT
            while "waiting: " not in _read(prepared.log_path):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)
            server.resume()
            resumed.set()

        helper = threading.Thread(target=bring_back_once_waiting, daemon=True)
        helper.start()
        with serve_process(prepared):
            assert resumed.is_set()
            trust = ssl.create_default_context(cafile=prepared.ca_bundle)
            response = httpx.get(f"{prepared.base_url}/healthz", verify=trust, timeout=10)
            assert response.status_code == 200, response.text
        helper.join(10)
        log = _read(prepared.log_path)
        assert "waiting: the database at " in log, log
        assert "Traceback" not in log, log
    finally:
        server.stop()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
