"""``fleetpki serve`` raises its open-files limit for its connections, and says when it is too low."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from support.serve_process import PreparedHome, prepare_home, serve_environment

_HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files line")


@contextmanager
def _serve_hub(prepared: PreparedHome, soft: int, hard: int) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "fleetpki", "--home", str(prepared.home), "serve"]
    command += ["--only", "hub"]
    with prepared.log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=log,
            env=serve_environment(),
            # The limit the server starts with, as a shell's ulimit would set it.
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),  # noqa: PLW1509
        )
    try:
        deadline = time.monotonic() + 60
        while "fleetpki hub on mqtts://" not in prepared.log_path.read_text(errors="replace"):
            assert process.poll() is None, prepared.log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, prepared.log_path.read_text(errors="replace")
            time.sleep(0.05)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def test_serve_raises_the_soft_limit_to_the_hard_one_and_says_so(tmp_path: Path) -> None:
    prepared = prepare_home(tmp_path, None, [], mqtt_max_connections=100, api_max_connections=50)
    with _serve_hub(prepared, 256, _HARD) as process:
        assert _limits(process.pid) == (_HARD, _HARD)
    said = prepared.log_path.read_text()
    assert f"open files limit raised from 256 to {_HARD}" in said
    assert "fewer than" not in said  # 100 MQTT connections fit


def test_serve_warns_when_the_hard_limit_cannot_hold_the_configured_connections(
    tmp_path: Path,
) -> None:
    prepared = prepare_home(tmp_path, None, [], mqtt_max_connections=5000)
    with _serve_hub(prepared, 300, 400) as process:
        assert _limits(process.pid) == (400, 400)
    said = " ".join(prepared.log_path.read_text().split())
    assert "open files limit raised from 300 to 400" in said
    # The MQTT cap plus the reserve (AMQP is off in prepared homes), nothing of the API.
    assert "the open files limit is 400 (hard limit 400), fewer than the 5128" in said
    assert "mqtt_max_connections (5000)" in said


_MAPPED_ALONE = """
import ctypes, sys
from fleetpki.process_limits import release_large_buffers_to_os
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    assert release_large_buffers_to_os()
libc.free(libc.malloc(1 << 20))  # glibc then raises its mmap threshold past 1 MiB
before = libc.mallinfo2().hblks
buffer = libc.malloc(256 * 1024)  # uvloop's read buffer of a TLS connection
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.parametrize(("mode", "mapped"), [("fixed", "1"), ("default", "0")])
def test_a_connection_sized_buffer_is_mapped_alone_once_serve_set_the_threshold(
    mode: str, mapped: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _MAPPED_ALONE, mode],
        env=serve_environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == mapped
