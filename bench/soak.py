"""Soak: 2,000 connected devices sending QoS 1 telemetry for 3 minutes (issue 14 item 6).

Run: ``.venv/bin/python bench/soak.py`` (the default: 2,000 devices, 180 s against
fleetpki, then the same against mosquitto; about 10 minutes in all, 3 of them making
the 2,000 device certificates), or smaller with
``--devices 200 --seconds 30``; ``--no-peer`` skips mosquitto.

fleetpki is ``fleetpki serve --only hub`` on a real home (SQLite), its devices registered
with certificates of the home's issuing CA (``bench/hub_common.py``). Every device keeps
one mutual-TLS connection and publishes one QoS 1 message every ``--interval`` seconds
(each at its own phase), and counts the PUBACKs it gets. After the run every device waits
for its last PUBACK, then the messages *stored* are counted in the database itself:
lost = PUBACKed - stored, which must be 0 (a PUBACK means "committed", MQTT 3.1.1
§4.3.2). mosquitto (``persistence false``) stores nothing, so its count is what a QoS 1
subscriber (``mosquitto_sub``, its own process) received. Every 10 s the script samples
each server's resident memory (RSS) and CPU, and the load client's own CPU, and prints
them as a table; "RSS change after the first minute" is the figure for memory staying
flat. Nothing here is asserted on timing: the table is read by people.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    rss_kb,
    workdir,
)

DEVICES = 2000
SECONDS = 180.0
INTERVAL = 1.0
SAMPLE_EVERY = 10.0
DRAIN_SECONDS = 60.0
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used, in seconds (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class Sample:
    """One 10-second sample of a run."""

    at: float
    connected: int
    acked: int
    rss_kb: int
    server_cpu: float  # share of one core since the previous sample
    client_cpu: float


@dataclass
class Run:
    """What one server did in the soak."""

    server: str
    devices: int
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    sent: int = 0
    acked: int = 0
    arrived: int = 0  # stored (fleetpki) or delivered to a subscriber (mosquitto)
    disconnected: int = 0

    @property
    def lost(self) -> int:
        """Messages acknowledged to a device but not stored (delivered)."""
        return max(self.acked - self.arrived, 0)

    def rss_after_first_minute(self) -> tuple[int, int] | None:
        """(RSS at the first sample at or after 60 s, RSS at the last sample), in KiB."""
        later = [s for s in self.samples if s.at >= 60.0]
        if len(later) < 2:
            return None
        return later[0].rss_kb, later[-1].rss_kb


class SoakClient(MQTTClient):
    """The benchmarks' raw MQTT client, sending one QoS 1 message at a time on a timer."""

    def __init__(self, index: int) -> None:
        super().__init__(index, window=0)
        self.sent = 0

    def send_one(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._send(1)
            self.sent += 1

    @property
    def is_open(self) -> bool:
        return not self.closed.done()


async def _publisher(client: SoakClient, interval: float, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    # Each device at its own phase, so that the load is even rather than 2,000 at once.
    next_at = loop.time() + random.uniform(0, interval)
    while not stop.is_set():
        delay = next_at - loop.time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
        client.send_one()
        next_at += interval


async def soak(
    port: int, pid: int, certs: Certs, run: Run, interval: float, sample_every: float
) -> list[SoakClient]:
    """Connect every device, publish for ``run.seconds``, wait for the last PUBACKs."""
    contexts = [client_context(certs, i) for i in range(run.devices)]
    loop = asyncio.get_running_loop()
    clients = [
        c
        for c in await connect_clients(port, contexts, range(run.devices), factory=SoakClient)
        if isinstance(c, SoakClient)
    ]
    del contexts
    stop = asyncio.Event()
    publishers = [asyncio.create_task(_publisher(c, interval, stop)) for c in clients]
    started = loop.time()
    server_cpu, client_cpu, last = cpu_seconds(pid), time.process_time(), started
    while (now := loop.time()) - started < run.seconds:
        await asyncio.sleep(min(sample_every, run.seconds - (now - started)))
        now = loop.time()
        cpu, own = cpu_seconds(pid), time.process_time()
        run.samples.append(
            Sample(
                at=now - started,
                connected=sum(c.is_open for c in clients),
                acked=sum(c.acked for c in clients),
                rss_kb=rss_kb(pid),
                server_cpu=(cpu - server_cpu) / (now - last),
                client_cpu=(own - client_cpu) / (now - last),
            )
        )
        server_cpu, client_cpu, last = cpu, own, now
        sample = run.samples[-1]
        print(
            f"  {run.server} {sample.at:5.0f} s: {sample.connected} connected, "
            f"{sample.acked:,} PUBACKed, RSS {sample.rss_kb / 1024:.1f} MiB",
            flush=True,
        )
    stop.set()
    await asyncio.gather(*publishers)
    drain_until = loop.time() + DRAIN_SECONDS
    while loop.time() < drain_until and any(c.acked < c.sent and c.is_open for c in clients):
        await asyncio.sleep(0.1)
    run.sent = sum(c.sent for c in clients)
    run.acked = sum(c.acked for c in clients)
    run.disconnected = sum(not c.is_open for c in clients)
    for client in clients:
        client.disconnect()
    await asyncio.gather(*(c.closed for c in clients))
    return clients


def stored_messages(certs: Certs) -> int:
    """Telemetry rows in the home's database, counted by SQLite itself."""
    with contextlib.closing(sqlite3.connect(certs.home / "fleetpki.db")) as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM hub_messages WHERE device_id LIKE 'dev%'"
        ).fetchone()
    return int(count)


@contextmanager
def subscriber(port: int, certs: Certs) -> Iterator[list[int]]:
    """``mosquitto_sub`` at QoS 1 on every device's events; yields [messages received]."""
    exe = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
    cert, key = certs.device(0)
    command = [
        exe,
        *("-h", "127.0.0.1", "-p", str(port), "-q", "1", "-i", "soak-monitor"),
        *("--cafile", str(certs.ca), "--cert", str(cert), "--key", str(key), "--insecure"),
        *("-t", "devices/+/messages/events/#"),
    ]
    received = [0]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def count() -> None:
        assert process.stdout is not None
        for _ in process.stdout:
            received[0] += 1

    reader = threading.Thread(target=count, daemon=True)
    reader.start()
    time.sleep(1.0)  # subscribed before the devices start
    try:
        yield received
    finally:
        time.sleep(1.0)  # the last deliveries
        process.terminate()
        process.wait(10)
        reader.join(10)


def run_fleetpki(certs: Certs, args: argparse.Namespace) -> Run:
    run = Run("fleetpki", args.devices, args.seconds)
    with fleetpki_hub(certs) as (port, pid):
        uvloop.run(soak(port, pid, certs, run, args.interval, args.sample_every))
    # The server has stopped (and drained): the database holds what it will ever hold.
    run.arrived = stored_messages(certs)
    return run


def run_mosquitto(certs: Certs, args: argparse.Namespace) -> Run:
    run = Run("mosquitto", args.devices, args.seconds)
    with mosquitto(certs) as (port, pid), subscriber(port, certs) as received:
        uvloop.run(soak(port, pid, certs, run, args.interval, args.sample_every))
    run.arrived = received[0]
    return run


def report(runs: list[Run], args: argparse.Namespace) -> str:
    lines = [
        f"\nSoak: {args.devices} devices, one QoS 1 message each every {args.interval:g} s, "
        f"{args.seconds:g} s",
        "",
        "| server | t (s) | connected | PUBACKed so far | server RSS (MiB) "
        "| server CPU (% of a core) | load client CPU (% of a core) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.extend(
            f"| {run.server} | {s.at:.0f} | {s.connected} | {s.acked:,} | {s.rss_kb / 1024:.1f} "
            f"| {100 * s.server_cpu:.0f} | {100 * s.client_cpu:.0f} |"
            for s in run.samples
        )
    lines += [
        "",
        "| server | sent | PUBACKed | stored (fleetpki) / delivered (mosquitto) | lost "
        "| connections dropped | RSS change after the first minute |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        flat = run.rss_after_first_minute()
        change = (
            f"{(flat[1] - flat[0]) / 1024:+.1f} MiB ({100 * (flat[1] - flat[0]) / flat[0]:+.1f} %)"
            if flat
            else "(run shorter than 80 s)"
        )
        lines.append(
            f"| {run.server} | {run.sent:,} | {run.acked:,} | {run.arrived:,} | {run.lost} "
            f"| {run.disconnected} | {change} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=DEVICES)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--interval", type=float, default=INTERVAL, help="seconds per message")
    parser.add_argument("--sample-every", type=float, default=SAMPLE_EVERY)
    parser.add_argument("--no-peer", action="store_true", help="skip the mosquitto run")
    args = parser.parse_args()
    with workdir() as folder:
        print(f"making a home with {args.devices} devices ...", flush=True)
        certs = make_certs(folder, args.devices)
        runs = [run_fleetpki(certs, args)]
        if not args.no_peer:
            runs.append(run_mosquitto(certs, args))
    print(report(runs, args))
    return 1 if runs[0].lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
