"""Durable QoS 1 telemetry messages per second from 100 devices: fleetpki vs mosquitto.

Run: ``.venv/bin/python bench/hub_telemetry.py`` (about 45 s). Each device keeps
``--window`` QoS 1 PUBLISHes in flight; a message counts when its PUBACK arrives. fleetpki
is ``fleetpki serve --only hub`` on a real home: it acknowledges only after the batch
holding the message is committed to the home's SQLite database (WAL,
``synchronous=NORMAL``) through the hub's message service; mosquitto runs with
``persistence false``, so it stores nothing.

The load client is ``--clients`` processes (2 by default), each driving its share of the
devices on its own uvloop with pre-encoded PUBLISHes, so that one Python interpreter is
not the limit. Timed rounds alternate between the two servers (``--rounds`` each, both
servers running throughout); the table gives the median round and the range, the CPU
each server used per message, and the CPU share of the server and of the load client
processes (added up: 100 % is one core) during the timed window. After the last round
the messages stored in fleetpki's database are counted against those PUBACKed.

``--profile FILE`` also samples the fleetpki server with py-spy during its first round
(needs ``py-spy``: ``.venv/bin/pip install py-spy``) and writes py-spy's raw
collapsed stacks to ``FILE``: the thread holding the GIL, or with ``--native`` every
thread on a CPU with its C frames (TLS, SQLite, the kernel calls).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).parent))
from hub_common import (
    Certs,
    MQTTClient,
    client_context,
    connect_clients,
    fleetpki_hub,
    make_certs,
    mosquitto,
    workdir,
)

DEVICES = 100
WINDOW = 20
SECONDS = 4.0
ROUNDS = 2
CLIENTS = 2
_TICKS = os.sysconf("SC_CLK_TCK")
_PAYLOAD = b"x" * 64
# Packet identifiers 1..65535, pre-encoded.
_IDS = [b""] + [i.to_bytes(2, "big") for i in range(1, 65536)]


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process and its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and its threads, in seconds."""
    return sum(cpu_times(pid))


class FastClient(MQTTClient):
    """`MQTTClient` whose PUBLISHes are a pre-encoded prefix, a packet id and the payload."""

    def __init__(self, index: int, window: int) -> None:
        super().__init__(index, window)
        topic = self.topic.encode()
        variable = len(topic).to_bytes(2, "big") + topic
        length = len(variable) + 2 + len(_PAYLOAD)
        assert length < 128  # one byte of remaining length
        self._prefix = bytes((0x32, length)) + variable

    def _send(self, count: int) -> None:
        parts = []
        prefix, next_id = self._prefix, self.next_id
        for _ in range(count):
            parts += (prefix, _IDS[next_id], _PAYLOAD)
            next_id = next_id % 65535 + 1
        self.next_id = next_id
        assert self.transport is not None
        self.transport.write(b"".join(parts))


@dataclass(frozen=True)
class Round:
    """One timed round against one server."""

    server: str
    rate: float  # PUBACKs per second, all client processes together
    acked: int
    server_cpu: float  # seconds of CPU the server used in the window
    server_system: float  # of which in the kernel (system time)
    client_cpu: float  # seconds of CPU the load client processes used in the window
    seconds: float


def _client_process(
    port: int, folder: str, indexes: list[int], window: int, seconds: float, pipe: Connection
) -> None:
    """One load-client process: connect its devices, wait for "go", send, report."""
    certs = Certs(Path(folder))

    async def run() -> tuple[int, float, float]:
        contexts = [client_context(certs, i) for i in indexes]
        clients = await connect_clients(
            port, contexts, indexes, window, factory=lambda i: FastClient(i, window)
        )
        pipe.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        cpu, started = time.process_time(), time.perf_counter()
        for client in clients:
            client.start_sending()
        await asyncio.sleep(seconds)
        acked = sum(c.acked for c in clients)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        for client in clients:
            client.sending = False
            client.disconnect()
        await asyncio.gather(*(c.closed for c in clients))
        return acked, elapsed, cpu

    pipe.send(uvloop.run(run()))


def measure(server: str, port: int, pid: int, certs: Certs, args: argparse.Namespace) -> Round:
    """A timed round: ``args.clients`` processes share the devices."""
    context = multiprocessing.get_context("spawn")
    shares = [list(range(DEVICES))[i :: args.clients] for i in range(args.clients)]
    pipes, processes = [], []
    for share in shares:
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_client_process,
            args=(port, str(certs.folder), share, args.window, args.seconds, theirs),
        )
        process.start()
        pipes.append(ours)
        processes.append(process)
    for pipe in pipes:
        if pipe.recv() != "ready":
            raise RuntimeError("a load client did not connect")
    pids = [pid] + [p.pid for p in processes if p.pid is not None]
    system = cpu_times(pid)[1]
    before = [cpu_seconds(p) for p in pids]
    for pipe in pipes:
        pipe.send("go")
    results = [pipe.recv() for pipe in pipes]
    used = [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
    system = cpu_times(pid)[1] - system
    for process in processes:
        process.join(30)
    acked = sum(r[0] for r in results)
    seconds = max(r[1] for r in results)
    return Round(
        server,
        sum(r[0] / r[1] for r in results),
        acked,
        # CPU is read around the whole window (a little longer than it).
        used[0],
        system,
        sum(used[1:]),
        seconds,
    )


@contextlib.contextmanager
def profiled(pid: int, output: str | None, native: bool = False) -> Iterator[None]:
    """Sample ``pid`` with py-spy while the block runs, if ``output`` is given.

    By default only the thread holding the GIL is sampled (where Python runs);
    ``native`` samples every thread on a CPU instead, C frames (TLS, SQLite) included.
    """
    if output is None:
        yield
        return
    spy = (
        os.environ.get("PY_SPY")
        or shutil.which("py-spy")
        or str(Path(sys.executable).with_name("py-spy"))
    )
    command = [
        spy,
        "record",
        "--format",
        "raw",
        "--rate",
        "250",
        *(["--native"] if native else ["--gil"]),
        "--pid",
        str(pid),
        "--output",
        output,
    ]
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    try:
        yield
    finally:
        recorder.send_signal(2)
        recorder.wait(30)


def stored_messages(certs: Certs) -> int:
    """Telemetry rows in the home's database, counted by SQLite itself."""
    with contextlib.closing(sqlite3.connect(certs.home / "fleetpki.db")) as connection:
        (count,) = connection.execute("SELECT count(*) FROM hub_messages").fetchone()
    return int(count)


def _range(values: list[float], spec: str) -> str:
    low, high = min(values), max(values)
    return f"{low:{spec}}" if low == high else f"{low:{spec}}-{high:{spec}}"


def report(rounds: list[Round], args: argparse.Namespace, stored: int, loadavg: str) -> str:
    """The table: median rate and range, CPU per message, CPU shares."""
    lines = [
        f"\nQoS 1 telemetry msgs/s, {DEVICES} devices, {args.window} in flight each, "
        f"{args.clients} load-client processes, {args.rounds} rounds of {args.seconds:g} s "
        f"each (higher is better); load average {loadavg}",
        "| server | msgs/s (median) | range | server CPU µs/msg | server CPU | load client CPU |",
        "|---|---|---|---|---|---|",
    ]
    medians = {}
    for server in ("fleetpki", "mosquitto"):
        mine = [r for r in rounds if r.server == server]
        rates = [r.rate for r in mine]
        medians[server] = statistics.median(rates)
        per_msg = [r.server_cpu / r.acked * 1e6 for r in mine if r.acked]
        server_share = [r.server_cpu / r.seconds * 100 for r in mine]
        client_share = [r.client_cpu / r.seconds * 100 for r in mine]
        lines.append(
            f"| {server} | {medians[server]:,.0f} | {_range(rates, ',.0f')} "
            f"| {_range(per_msg, '.1f')} | {_range(server_share, '.0f')} % "
            f"| {_range(client_share, '.0f')} % |"
        )
    ratios = [
        f.rate / m.rate
        for f, m in zip(
            [r for r in rounds if r.server == "fleetpki"],
            [r for r in rounds if r.server == "mosquitto"],
            strict=True,
        )
    ]
    acked = sum(r.acked for r in rounds if r.server == "fleetpki")
    lines.append(
        f"| ratio fleetpki/mosquitto | {medians['fleetpki'] / medians['mosquitto']:.2f} "
        f"| {_range(ratios, '.2f')} (round by round) | | | |"
    )
    lines.append(
        f"\nfleetpki: {acked:,} PUBACKed in the timed windows, {stored:,} stored in its "
        f"database (more stored than PUBACKed: messages in flight when a window closed)"
    )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=CLIENTS, help="load-client processes")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed rounds per server")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="length of a round")
    parser.add_argument("--window", type=int, default=WINDOW, help="PUBLISHes in flight")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the fleetpki server")
    parser.add_argument("--native", action="store_true", help="--profile with C frames")
    parser.add_argument("--no-peer", action="store_true", help="fleetpki rounds only")
    args = parser.parse_args()
    rounds: list[Round] = []
    with workdir() as folder:
        certs = make_certs(folder, DEVICES)
        with fleetpki_hub(certs) as (port, pid), mosquitto(certs) as (peer_port, peer_pid):
            for number in range(args.rounds):
                with profiled(pid, args.profile if number == 0 else None, args.native):
                    rounds.append(measure("fleetpki", port, pid, certs, args))
                if not args.no_peer:
                    rounds.append(measure("mosquitto", peer_port, peer_pid, certs, args))
            loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        stored = stored_messages(certs)
    if args.no_peer:
        for r in rounds:
            print(
                f"fleetpki {r.rate:,.0f} msgs/s, {r.server_cpu / r.acked * 1e6:.1f} µs CPU/msg "
                f"({r.server_system / r.acked * 1e6:.1f} of it system time), "
                f"server {r.server_cpu / r.seconds:.0%} of a core, "
                f"load client {r.client_cpu / r.seconds:.0%}; load average "
                + " ".join(Path("/proc/loadavg").read_text().split()[:3])
            )
        return 0
    print(report(rounds, args, stored, loadavg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
