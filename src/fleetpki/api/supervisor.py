"""``fleetpki serve --workers N``: N forked server processes on one port, kept running.

Theory of operation. The parent binds the listening sockets, then forks one child per
*slot* before it has made a thread, an event loop or a database connection, so each
child starts clean and opens everything itself; the kernel spreads the connections of
the shared socket over the children that accept on it. Slot 0 is the *primary*: it is
started first and the others only once it is ready (it migrates the database and makes
the server certificate they all serve). A child reports that it is ready by writing
one byte on a pipe of its own.

The parent then supervises. A child that exits before it was ever ready fails the
start: the others are stopped and ``run`` returns 1 (the child has said why on
stderr). A child that dies later is restarted in its slot, with a log line, after
:data:`RESTART_DELAY` seconds, doubled for each quick death in a row (up to
:data:`MAX_RESTART_DELAY`). SIGTERM or SIGINT (also SIGHUP) stop every child with
SIGTERM, wait :attr:`Supervisor.stop_timeout` seconds for their graceful stop, then
kill what remains. On Linux each child also gets SIGTERM when the parent dies, so no
worker outlives a killed supervisor.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["MAX_RESTART_DELAY", "RESTART_DELAY", "Supervisor", "WorkerTarget"]

_log = logging.getLogger("fleetpki.serve")

#: Seconds before a worker that died is started again.
RESTART_DELAY = 1.0
#: The longest wait before a restart, for a worker that keeps dying at once.
MAX_RESTART_DELAY = 30.0
#: A worker that ran for less than this before it died died "quickly".
_QUICK_DEATH = 10.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1

#: What a child runs: its slot and the callback that says it is ready; returns an exit code.
WorkerTarget = Callable[[int, Callable[[], None]], int]


@dataclass(slots=True)
class _Slot:
    number: int
    pid: int | None = None
    ready_fd: int | None = None
    ready: bool = False
    ever_ready: bool = False
    started_at: float = 0.0
    restart_at: float | None = None
    delay: float = RESTART_DELAY
    exits: list[str] = field(default_factory=list)


class Supervisor:
    """Fork, watch and restart ``workers`` children that each run ``target(slot, ready)``.

    Args:
        workers: how many children (slot 0 is the primary).
        target: what a child runs; it calls ``ready()`` once it serves.
        stop_timeout: seconds a child may take to stop before it is killed.
        start_timeout: seconds a child may take to become ready at the start.
        on_started: called in the parent once every child is ready.
    """

    def __init__(
        self,
        workers: int,
        target: WorkerTarget,
        *,
        stop_timeout: float = 20.0,
        start_timeout: float = 120.0,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self.workers = workers
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self._target = target
        self._on_started = on_started
        self._slots = [_Slot(n) for n in range(workers)]
        self._wake_r, self._wake_w = -1, -1
        self._stopping = False
        self._signalled = False
        self._parent = os.getpid()

    @property
    def pids(self) -> dict[int, int]:
        """The running children's pids by slot."""
        return {s.number: s.pid for s in self._slots if s.pid is not None}

    def run(self) -> int:
        """Start the children and supervise them until a stop signal; the exit code.

        Returns 0 after a stop signal, 1 when a child failed to start.
        """
        if threading.active_count() > 1:
            # A thread does not survive fork(), and whatever lock it held stays held.
            _log.warning(
                "serve: %d threads run before the workers are forked", threading.active_count()
            )
        self._parent = os.getpid()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_signal)
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        try:
            return self._supervise()
        finally:
            self._stop_all()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum in _STOP_SIGNALS:
            self._stopping = self._signalled = True

    # -- the supervision loop ---------------------------------------------------------------

    def _supervise(self) -> int:
        primary, others = self._slots[0], self._slots[1:]
        self._spawn(primary)
        if not self._await_ready([primary]):
            return 0 if self._signalled else 1
        for slot in others:
            self._spawn(slot)
        if not self._await_ready(others):
            return 0 if self._signalled else 1
        if self._on_started is not None:
            self._on_started()
        while not self._stopping:
            self._wait(self._next_timeout())
            if self._stopping:
                break
            self._read_ready()
            self._reap(starting=False)
            now = time.monotonic()
            for slot in self._slots:
                if slot.pid is None and slot.restart_at is not None and now >= slot.restart_at:
                    self._spawn(slot)
        return 0

    def _await_ready(self, slots: list[_Slot]) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while not self._stopping and not all(s.ready for s in slots):
            if time.monotonic() > deadline:
                _log.error("serve: the workers did not start within %.0f s", self.start_timeout)
                return False
            self._wait(0.5)
            self._read_ready()
            if not self._reap(starting=True):
                return False
        return not self._stopping

    def _next_timeout(self) -> float:
        pending = [s.restart_at for s in self._slots if s.pid is None and s.restart_at]
        if not pending:
            return 5.0
        return max(0.0, min(pending) - time.monotonic())

    def _wait(self, timeout: float) -> None:
        fds = [self._wake_r, *(s.ready_fd for s in self._slots if s.ready_fd is not None)]
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select(fds, [], [], timeout)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(self._wake_r, 512)

    def _read_ready(self) -> None:
        for slot in self._slots:
            if slot.ready_fd is None:
                continue
            readable, _, _ = select.select([slot.ready_fd], [], [], 0)
            if not readable:
                continue
            data = b""
            with contextlib.suppress(OSError):
                data = os.read(slot.ready_fd, 1)
            os.close(slot.ready_fd)
            slot.ready_fd = None
            if data:
                slot.ready = slot.ever_ready = True

    def _reap(self, *, starting: bool) -> bool:
        """Collect dead children; ``False`` when one died before it was ever ready."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return True
            slot = next((s for s in self._slots if s.pid == pid), None)
            if slot is None:
                continue
            how = _describe(status)
            slot.pid, slot.ready = None, False
            if slot.ready_fd is not None:
                os.close(slot.ready_fd)
                slot.ready_fd = None
            if self._stopping:
                continue
            if starting or not slot.ever_ready:
                _log.error("serve: worker %d (pid %d) %s while starting", slot.number, pid, how)
                self._stopping = True
                return False
            lived = time.monotonic() - slot.started_at
            slot.delay = (
                min(slot.delay * 2, MAX_RESTART_DELAY) if lived < _QUICK_DEATH else RESTART_DELAY
            )
            slot.restart_at = time.monotonic() + slot.delay
            _log.warning(
                "serve: worker %d (pid %d) %s; restarting it in %.0f s",
                slot.number,
                pid,
                how,
                slot.delay,
            )

    # -- children ---------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            self._become_child(slot.number, write_fd)
        os.close(write_fd)
        slot.pid, slot.ready_fd, slot.ready = pid, read_fd, False
        slot.started_at, slot.restart_at = time.monotonic(), None
        if slot.ever_ready:
            _log.warning("serve: worker %d started again (pid %d)", slot.number, pid)

    def _become_child(self, number: int, ready_fd: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (*_STOP_SIGNALS, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            for other in self._slots:
                if other.ready_fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(other.ready_fd)
            _die_with_parent(self._parent)

            def ready() -> None:
                with contextlib.suppress(OSError):
                    os.write(ready_fd, b"1")
                    os.close(ready_fd)

            code = self._target(number, ready)
        except KeyboardInterrupt:
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _stop_all(self) -> None:
        self._stopping = True
        running = [s for s in self._slots if s.pid is not None]
        for slot in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + self.stop_timeout
        while any(s.pid is not None for s in self._slots):
            for slot in self._slots:
                if slot.pid is None:
                    continue
                try:
                    pid, _ = os.waitpid(slot.pid, os.WNOHANG)
                except ChildProcessError:
                    pid = slot.pid
                if pid:
                    slot.pid = None
            if time.monotonic() > deadline:
                for slot in self._slots:
                    if slot.pid is not None:
                        _log.warning("serve: worker %d did not stop; killed", slot.number)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(slot.pid, signal.SIGKILL)
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(slot.pid, 0)
                        slot.pid = None
                break
            time.sleep(0.05)
        for slot in self._slots:
            if slot.ready_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(slot.ready_fd)
                slot.ready_fd = None


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _die_with_parent(parent: int) -> None:
    # Linux's prctl(PR_SET_PDEATHSIG): SIGTERM when the supervisor dies.
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)
