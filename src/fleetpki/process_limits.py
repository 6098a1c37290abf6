"""The server process's limits: open files for every connection, and the allocator.

``fleetpki serve`` holds one file descriptor per connection on each of its ports (the
API's, the hub's MQTT and AMQP ports), up to their caps (``api_max_connections``,
``mqtt_max_connections``; the AMQP port takes the MQTT cap). Linux starts a process
with the soft ``RLIMIT_NOFILE`` its parent had, often 1,024, while the hard limit is
usually far higher: `raise_open_files_limit` raises the soft limit to the hard one at
start, and `open_files_needed` says how many the configured caps need, so that serve
can say when the limit is too low for them (the listener then refuses connections at
``accept`` with EMFILE, logged, rather than at its cap).

`release_large_buffers_to_os` fixes glibc's mmap threshold at its default (128 KiB)
instead of letting it grow: uvloop gives every TLS connection a 256 KiB read buffer of
which a handshake and idle MQTT touch one page; mapped on its own, only that page is
resident, where in the heap the buffers and everything allocated between them spread
an idle connection over more pages (bench/README.md, "Hub").
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from dataclasses import dataclass

__all__ = [
    "OpenFilesLimit",
    "open_files_needed",
    "raise_open_files_limit",
    "release_large_buffers_to_os",
]

#: Descriptors serve needs beside its connections: listening sockets, the database and
#: its WAL, log files, the event loop's own, thread pools' wake-ups.
RESERVED_FILES = 128

_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
_MMAP_THRESHOLD = 128 * 1024  # glibc's default, no longer raised by frees


@dataclass(frozen=True, slots=True)
class OpenFilesLimit:
    """The soft ``RLIMIT_NOFILE`` before and after `raise_open_files_limit`, and the hard one.

    ``None`` where the platform has no such limit (not POSIX).
    """

    before: int | None
    soft: int | None
    hard: int | None

    @property
    def raised(self) -> bool:
        """Whether the soft limit went up."""
        return self.before is not None and self.soft is not None and self.soft > self.before


def open_files_needed(
    *, api_connections: int | None, mqtt_connections: int | None, amqp: bool
) -> int:
    """The descriptors the configured connection caps need at most, with the reserve.

    Args:
        api_connections: ``api_max_connections`` when this process serves the API.
        mqtt_connections: ``mqtt_max_connections`` when it serves the MQTT port.
        amqp: whether it also serves the AMQP port (capped at the MQTT cap).
    """
    total = RESERVED_FILES + (api_connections or 0)
    if mqtt_connections is not None:
        total += mqtt_connections * (2 if amqp else 1)
    return total


def raise_open_files_limit() -> OpenFilesLimit:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit (children inherit it)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return OpenFilesLimit(None, None, None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # Linux refuses an infinite soft limit above fs.nr_open; its default is 2**20.
        target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    after, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return OpenFilesLimit(soft, after, hard)


def release_large_buffers_to_os() -> bool:
    """Keep glibc's mmap threshold at 128 KiB, so large buffers are mapped on their own.

    Returns whether it was set (``False`` on another C library or platform).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD))
