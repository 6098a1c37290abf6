"""Mutual-TLS CONNECTs per second, 50 concurrent, EC P-256 device certs: fleetpki vs mosquitto.

Run: ``.venv/bin/python bench/hub_connect.py`` (about 10 s). Each of 50 workers opens a TLS
connection with its own device certificate, sends CONNECT, waits for CONNACK 0, sends
DISCONNECT and closes, again and again for ``SECONDS``.
"""

from __future__ import annotations

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
    fleetpki_hub,
    make_certs,
    mosquitto,
    table,
    workdir,
)

WORKERS = 50
SECONDS = 4.0


async def measure(port: int, certs: Certs) -> float:
    contexts = [client_context(certs, i) for i in range(WORKERS)]
    count = 0
    stop_at = time.perf_counter() + SECONDS

    async def worker(index: int) -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            (client,) = await connect_clients(port, [contexts[index]], [index])
            client.disconnect()
            await client.closed
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(WORKERS)))
    return count / (time.perf_counter() - started)


def main() -> None:
    with workdir() as folder:
        certs = make_certs(folder, WORKERS)
        with fleetpki_hub(certs) as (port, _):
            fleet = uvloop.run(measure(port, certs))
        with mosquitto(certs) as (port, _):
            mosq = uvloop.run(measure(port, certs))
    print(table(f"mutual-TLS connects/s, {WORKERS} concurrent", "connects/s", fleet, mosq))


if __name__ == "__main__":
    main()
