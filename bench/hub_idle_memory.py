"""Memory per idle mutual-TLS MQTT connection, every device still connected: fleetpki vs mosquitto.

Run: ``.venv/bin/python bench/hub_idle_memory.py`` (1,000 devices, about 60 s, most of
it issuing their certificates) or ``--devices 10000`` (about 5 minutes; add
``--certs DIR`` to keep the home and its 10,000 certificates for the next run). A
multi-process load client (`hub_load_common.IdleFleet`, ``--processes``) connects every
device and keeps it idle; the server's RSS is read before and after; then a PINGREQ
on every connection counts the PINGRESPs, so the table says how many devices were
still connected. The figure is the RSS delta / n; beside it, the anonymous part
(``RssAnon``: heap, mappings, Python objects) without the file pages the connections
brought in (``RssFile``: code first run, and the pages of the database file that
SQLite reads through its memory map while authenticating the devices). fleetpki is
``fleetpki serve --only hub``, which raises its open-files limit to the hard limit at
start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).parent))
from hub_common import (
    Certs,
    client_context,
    connect_clients,
    cpu_seconds,
    fleetpki_hub,
    make_certs,
    mosquitto,
    rss_kb,
    rss_parts_kb,
    workdir,
)
from hub_load_common import IdleFleet, load_processes


async def _warm_up(port: int, certs: Certs) -> None:
    # Allocator arenas, the first handshake, the registry's first reads: before the baseline.
    contexts = [client_context(certs, i) for i in range(5)]
    warm = await connect_clients(port, contexts, list(range(5)))
    for client in warm:
        client.disconnect()
    await asyncio.gather(*(c.closed for c in warm))
    await asyncio.sleep(0.5)


def measure(port: int, pid: int, certs: Certs, devices: int, processes: int) -> dict[str, float]:
    uvloop.run(_warm_up(port, certs))
    before = rss_kb(pid)
    parts_before = rss_parts_kb(pid)
    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    fleet = IdleFleet(certs, port, devices, processes)
    connected, load_cpu = fleet.connected()
    connect_seconds = time.perf_counter() - started
    server_cpu = cpu_seconds(pid) - cpu
    time.sleep(2.0)
    after = rss_kb(pid)
    parts_after = rss_parts_kb(pid)
    alive, _ = fleet.ping()
    fleet.close()
    return {
        "connected": connected,
        "alive": alive,
        "before": before / 1024,
        "after": after / 1024,
        "per_connection": (after - before) * 1024 / devices / 1000,
        "anon_per_connection": (parts_after["RssAnon"] - parts_before["RssAnon"])
        * 1024
        / devices
        / 1000,
        "connect_seconds": connect_seconds,
        "server_cpu": server_cpu,
        "load_cpu": max(load_cpu) / connect_seconds * 100,
    }


def cached_certs(folder: Path, devices: int) -> Certs:
    """The home with ``devices`` devices in ``folder``, made once and reused."""
    done = folder / f"complete-{devices}"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)  # mosquitto, running as its own user, reads the files
        make_certs(folder, devices)
        done.touch()
    return Certs(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=load_processes())
    parser.add_argument("--certs", type=Path, help="keep the home and certificates here")
    args = parser.parse_args()
    with workdir() as scratch:
        issued = time.perf_counter()
        certs = cached_certs(args.certs or scratch / "certs", args.devices)
        print(f"home with {args.devices} devices ready in {time.perf_counter() - issued:.0f} s")
        results = {}
        with fleetpki_hub(certs) as (port, pid):
            results["fleetpki"] = measure(port, pid, certs, args.devices, args.processes)
        with mosquitto(certs) as (port, pid):
            results["mosquitto"] = measure(port, pid, certs, args.devices, args.processes)
    print(
        f"\nidle mutual-TLS connections, {args.devices} devices from {args.processes} load "
        "processes (KB/connection: RSS delta / n, lower is better)"
    )
    print(
        "| server | connected | answered PINGREQ | RSS before → after (MiB) | KB/connection "
        "| of which anonymous (not file pages) | connect phase (s) | server CPU (s) "
        "| load CPU (busiest process) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['connected']:.0f} | {r['alive']:.0f} | {r['before']:.1f} → "
            f"{r['after']:.1f} | {r['per_connection']:.1f} | {r['anon_per_connection']:.1f} | "
            f"{r['connect_seconds']:.1f} | "
            f"{r['server_cpu']:.1f} | {r['load_cpu']:.0f} % |"
        )
    ratio = results["fleetpki"]["per_connection"] / results["mosquitto"]["per_connection"]
    print(f"| ratio fleetpki/mosquitto (KB/connection) | | | | {ratio:.2f} | | | | |")


if __name__ == "__main__":
    main()
