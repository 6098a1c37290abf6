"""The SQLite write gate among processes (store/sqlite_write_gate.py): a writer in one
process waits for another process's writing unit and starts once it has ended; a writer
that waited the busy timeout goes on to SQLite's own lock; the lock file is private."""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fleetpki.store.sqlite_write_gate import LOCK_SUFFIX, SqliteWriteGate

# A process that passes the gate, says so, and holds it until told to let go.
_HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from fleetpki.store.sqlite_write_gate import SqliteWriteGate
    gate = SqliteWriteGate(Path(sys.argv[1]), timeout=30)
    gate.enter()
    print("held", flush=True)
    sys.stdin.readline()
    gate.leave()
    print("released", flush=True)
    """
)


@contextmanager
def _holder(database: Path) -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            yield holder
        finally:
            holder.kill()


def test_a_writer_waits_for_another_process_and_starts_when_it_ends(tmp_path: Path) -> None:
    database = tmp_path / "fleet.db"
    gate = SqliteWriteGate(database, timeout=60)
    entered = threading.Event()

    def write() -> None:
        gate.enter()
        entered.set()
        gate.leave()

    with _holder(database) as holder:
        writer = threading.Thread(target=write)
        writer.start()
        try:
            # Still waiting while the other process holds the gate.
            assert not entered.wait(1.0)
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "released"
            assert entered.wait(30)
        finally:
            writer.join(30)
    gate.close()
    mode = stat.S_IMODE((tmp_path / f"fleet.db{LOCK_SUFFIX}").stat().st_mode)
    assert mode == 0o600


def test_after_the_busy_timeout_a_writer_goes_on_without_the_gate(tmp_path: Path) -> None:
    database = tmp_path / "fleet.db"
    with _holder(database):
        gate = SqliteWriteGate(database, timeout=0.2)
        done = threading.Event()

        def write() -> None:
            gate.enter()
            gate.leave()
            done.set()

        threading.Thread(target=write, daemon=True).start()
        # It returns (SQLite's own lock and busy timeout decide from there).
        assert done.wait(30)
        gate.close()


def test_threads_of_one_process_take_turns_and_nesting_passes(tmp_path: Path) -> None:
    gate = SqliteWriteGate(tmp_path / "fleet.db", timeout=5)
    inside: list[int] = []
    overlaps: list[int] = []

    def write(number: int) -> None:
        for _ in range(200):
            gate.enter()
            gate.enter()  # a nested unit of work of the same thread
            inside.append(number)
            if len(inside) > 1:
                overlaps.append(number)
            inside.remove(number)
            gate.leave()
            gate.leave()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert overlaps == []
    # And the gate is free again: another process passes it at once.
    gate.close()
    with _holder(tmp_path / "fleet.db") as holder:
        assert holder.poll() is None


def test_a_lock_taken_for_a_writer_that_gave_up_is_let_go(tmp_path: Path) -> None:
    database = tmp_path / "fleet.db"
    gate = SqliteWriteGate(database, timeout=0.2)
    with _holder(database) as holder:
        gate.enter()  # waits 0.2 s for the holder, then goes on without the gate
        gate.leave()
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
    # The waiter thread got the lock once the holder let go, for a writer that had
    # given up: it lets go at once, so another process passes the gate.
    with _holder(database) as second:
        assert second.poll() is None
    gate.close()


# A process that adds one to a number in a file N times, each time inside the gate.
_COUNTER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from fleetpki.store.sqlite_write_gate import SqliteWriteGate
    database, counter, times = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    gate = SqliteWriteGate(database, timeout=60)
    for _ in range(times):
        gate.enter()
        value = int(counter.read_text())
        counter.write_text(str(value + 1))
        gate.leave()
    gate.close()
    """
)


def test_processes_that_contend_never_overlap(tmp_path: Path) -> None:
    # Read-modify-write of one file by three processes at once: an update is lost if
    # two are ever inside the gate together (the hand-over by the waiter thread).
    database, counter = tmp_path / "fleet.db", tmp_path / "counter"
    counter.write_text("0")
    times = 400
    writers = [
        subprocess.Popen([sys.executable, "-c", _COUNTER, str(database), str(counter), str(times)])
        for _ in range(3)
    ]
    assert [writer.wait(120) for writer in writers] == [0, 0, 0]
    assert int(counter.read_text()) == 3 * times
