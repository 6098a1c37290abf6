"""One writing unit of work at a time on a SQLite file, among threads and processes.

SQLite lets one transaction write at a time; the others wait in its busy handler, which
sleeps 1, 2, 5, 10 ... 100 ms between tries. Under concurrent issuance that leaves the
server idle while requests queue: eight at once ran at a fraction of the rate one at a
time allowed, and with ``fleetpki serve --workers 2`` the two processes spent most of a
burst asleep in each other's busy handler (bench/README.md). So a writing unit of work
first passes this gate, before its ``BEGIN IMMEDIATE``, and holds it until it has
committed or rolled back; the next writer, in this process or another, starts the moment
it is released:

- among this process's threads, a lock;
- among processes, an exclusive ``flock`` on a file beside the database
  (``<database>-writer.lock``), taken by the one thread of each process that holds the
  lock. A process that dies lets go of it with its file descriptors.

Waiting for another process's ``flock`` is a poll of a few microseconds each, 50 µs at
first and at most 1 ms apart. It gives up after the busy timeout and begins the unit of
work without the gate, so SQLite's own lock and busy timeout decide as before
(``database.unavailable``): a writer that is not fleetpki (the ``sqlite3`` shell), or a
stuck process, is met as it always was. A unit of work nested in a writing one of the
same thread does not pass the gate again; reading units never do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path

__all__ = ["LOCK_SUFFIX", "SqliteWriteGate"]

#: The suffix of the lock file's name, after the database file's.
LOCK_SUFFIX = "-writer.lock"

_FIRST_PAUSE = 0.00005
_LONGEST_PAUSE = 0.001


class SqliteWriteGate:
    """The gate of one SQLite database.

    Args:
        database: the database file, beside which the lock file is made (mode 0600);
            ``None`` (an in-memory database) for the threads' lock only.
        timeout: seconds to wait for another process before going on without the gate.
    """

    def __init__(self, database: Path | None, timeout: float) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self._path = None if database is None else database.with_name(database.name + LOCK_SUFFIX)
        self._timeout = timeout
        # The lock file's descriptor and the process that opened it: a forked child opens
        # its own (a shared open file description would share the flock).
        self._fd: int | None = None
        self._pid = 0
        self._held = False

    def enter(self) -> None:
        """A writing unit of work starts in this thread: wait for the other writers."""
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._lock.acquire()
            try:
                self._held = self._take_file_lock()
            except BaseException:
                self._lock.release()
                raise
        self._local.depth = depth + 1

    def leave(self) -> None:
        """A writing unit of work ended (committed or rolled back) in this thread."""
        self._local.depth -= 1
        if self._local.depth == 0:
            try:
                if self._held and self._fd is not None:
                    self._held = False
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                self._lock.release()

    def close(self) -> None:
        """Close the lock file (the database is being disposed of)."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            self._fd = None

    def _descriptor(self) -> int | None:
        if self._path is None:
            return None
        if self._fd is None or self._pid != os.getpid():
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                # A folder we may not write to: SQLite's own lock still serialises.
                self._fd = None
                return None
            self._pid = os.getpid()
        return self._fd

    def _take_file_lock(self) -> bool:
        fd = self._descriptor()
        if fd is None:
            return False
        pause = _FIRST_PAUSE
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, _LONGEST_PAUSE)
