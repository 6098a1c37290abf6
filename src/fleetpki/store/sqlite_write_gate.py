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

When another process holds the ``flock``, the writer does not poll for it: the process's
waiter thread (:class:`_FileLockWaiter`) blocks in ``flock`` on its behalf and hands it
over the moment the kernel grants it, while the writer waits on a condition with the
busy timeout. (A poll of the lock with sleeps from 50 µs to 1 ms left the gate idle for
up to a pause after the other process let go: with ``--workers 2`` on SQLite the
waiting thread raised the issuance rate and halved its p99, bench/README.md.) A
writer that waited the busy timeout begins the unit of work without the gate, so
SQLite's own lock and busy timeout decide as before
(``database.unavailable``): a writer that is not fleetpki (the ``sqlite3`` shell), or a
stuck process, is met as it always was; the waiter lets go of a lock it obtains for a
writer that gave up, or hands it to the writer waiting then. A unit of work nested in a
writing one of the same thread does not pass the gate again; reading units never do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path

__all__ = ["LOCK_SUFFIX", "SqliteWriteGate"]

#: The suffix of the lock file's name, after the database file's.
LOCK_SUFFIX = "-writer.lock"


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
        self._waiter: _FileLockWaiter | None = None

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
            if self._waiter is not None:
                self._waiter.stop()
                self._waiter = None
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
        waiter = self._waiter
        if waiter is not None and (waiter.pid != os.getpid() or waiter.fd != fd):
            # A forked child has its own descriptor, and needs its own waiter thread.
            waiter = None
        if waiter is None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                # The first wait for another process: from now on through a waiter.
                waiter = self._waiter = _FileLockWaiter(fd)
        return waiter.take(self._timeout)


class _Request:
    """One writer's wait for the file lock."""

    __slots__ = ("abandoned", "granted")

    def __init__(self) -> None:
        self.granted = False
        self.abandoned = False


class _FileLockWaiter:
    """Takes a process's lock file for its writer thread, blocking in ``flock``.

    ``flock`` has no timeout and a thread blocked in it cannot be woken, so the writer
    does not block there itself: it tries once without blocking and, if another process
    holds the lock, asks this daemon thread to wait for it and waits with its timeout on
    a condition. Every try and every hand-over happens under the condition, and the
    writer never tries while the thread waits in ``flock``: the lock belongs to the
    descriptor (its open file description), not to a thread, so a second ``LOCK_EX``
    through it passes while the first is held, and the thread's ``LOCK_UN`` of a lock
    it got for a writer that gave up would let go of the other's.

    The thread locks through a duplicate of the descriptor (the same open file
    description, so the same lock), which it closes as it ends: the gate may close its
    own while the thread still waits in ``flock``, and a number closed there may be
    reused for another file.

    Args:
        fd: the lock file's descriptor, opened by this process.
    """

    def __init__(self, fd: int) -> None:
        self.pid = os.getpid()
        self.fd = fd
        self._own = os.dup(fd)
        self._condition = threading.Condition()
        self._pending: _Request | None = None
        self._waiting = False
        self._stopped = False
        threading.Thread(target=self._run, name="fleetpki-sqlite-gate", daemon=True).start()

    def take(self, timeout: float) -> bool:
        """Take the lock for the calling writer: ``False`` if it waited ``timeout`` s."""
        with self._condition:
            if not self._waiting:
                try:
                    fcntl.flock(self._own, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    # A request given up before the thread took it up is void now.
                    self._pending = None
                    return True
                except BlockingIOError:
                    pass
            request = _Request()
            self._pending = request
            self._condition.notify_all()
            self._condition.wait_for(lambda: request.granted, timeout)
            if request.granted:
                return True
            # Given up: the thread lets the lock go when it gets it, unless a writer
            # that came after waits for it then.
            request.abandoned = True
            return False

    def stop(self) -> None:
        """End the thread once it is not waiting in ``flock`` (the descriptor closes)."""
        with self._condition:
            self._stopped = True
            self._condition.notify_all()

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            with contextlib.suppress(OSError):
                os.close(self._own)

    def _serve(self) -> None:
        condition = self._condition
        while True:
            with condition:
                condition.wait_for(lambda: self._pending is not None or self._stopped)
                if self._stopped:
                    return
                self._waiting = True
            try:
                fcntl.flock(self._own, fcntl.LOCK_EX)
            except OSError:
                # The writers waiting go on without the gate after their timeout.
                with condition:
                    self._waiting = False
                return
            with condition:
                self._waiting = False
                request, self._pending = self._pending, None
                if request is not None and not request.abandoned and not self._stopped:
                    request.granted = True
                    condition.notify_all()
                else:
                    with contextlib.suppress(OSError):
                        fcntl.flock(self._own, fcntl.LOCK_UN)
