"""Mutual-TLS CONNECTs per second, EC P-256 device certs: fleetpki vs mosquitto.

Run: ``.venv/bin/python bench/hub_connect.py`` (about 40 s). A multi-process load
client (`hub_load_common.connect_rate`: ``--processes`` processes, default the cores and at
least 2, each with ``--concurrency`` loops) opens a TLS connection with a device's
own certificate, sends CONNECT, waits for CONNACK 0, sends DISCONNECT and closes, again
and again for ``--seconds``. Both servers run for the whole benchmark and the timed
rounds alternate between them (``--rounds`` each). The table gives the median round's
rate, each round's server CPU per connect and the load processes' CPU (a share of
one core each), so that a load client at its limit shows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from hub_common import cpu_seconds, fleetpki_hub, make_certs, mosquitto, workdir
from hub_load_common import connect_rate, load_processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--processes", type=int, default=load_processes())
    parser.add_argument("--concurrency", type=int, default=25, help="per load process")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, float, str, int]]] = {"fleetpki": [], "mosquitto": []}
    with workdir() as folder:
        certs = make_certs(folder, args.devices)
        with fleetpki_hub(certs) as fleet, mosquitto(certs) as mosq:
            servers = {"fleetpki": fleet, "mosquitto": mosq}
            for _ in range(args.rounds):
                for name, (port, pid) in servers.items():
                    cpu = cpu_seconds(pid)
                    result = connect_rate(
                        certs,
                        port,
                        args.devices,
                        processes=args.processes,
                        concurrency=args.concurrency,
                        seconds=args.seconds,
                    )
                    used = cpu_seconds(pid) - cpu
                    per_connect = used / result.count * 1000 if result.count else float("nan")
                    rows[name].append((result.rate, per_connect, result.cpu_share, result.errors))
    print(
        f"\nmutual-TLS connects/s, {args.processes} load processes x {args.concurrency} "
        f"concurrent, {args.seconds:.0f} s rounds (higher is better)"
    )
    print("| server | connects/s (median) | rounds | server CPU ms/connect | load CPU | errors |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for name, results in rows.items():
        medians[name] = statistics.median(r[0] for r in results)
        rates = ", ".join(f"{r[0]:.0f}" for r in results)
        cpus = ", ".join(f"{r[1]:.2f}" for r in results)
        loads = " / ".join(r[2] for r in results)
        errors = sum(r[3] for r in results)
        print(f"| {name} | {medians[name]:.1f} | {rates} | {cpus} | {loads} | {errors} |")
    ratio = medians["fleetpki"] / medians["mosquitto"] if medians["mosquitto"] else float("nan")
    print(f"| ratio fleetpki/mosquitto | {ratio:.2f} | | | | |")


if __name__ == "__main__":
    main()
