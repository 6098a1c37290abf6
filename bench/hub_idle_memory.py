"""Memory per idle mutual-TLS MQTT connection with 1,000 devices: fleetpki vs mosquitto.

Run: ``.venv/bin/python bench/hub_idle_memory.py`` (about 40 s, most of it issuing 1,000
certificates). The server's RSS is read before and after 1,000 devices connect and sit
idle; the figure is the delta / n.
"""

from __future__ import annotations

import asyncio
import sys
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
    rss_kb,
    table,
    workdir,
)

DEVICES = 1000


async def measure(port: int, pid: int, certs: Certs) -> float:
    contexts = [client_context(certs, i) for i in range(DEVICES)]
    # Warm the server up (allocator arenas, first handshake) before the baseline.
    warm = await connect_clients(port, contexts[:5], list(range(5)))
    for client in warm:
        client.disconnect()
    await asyncio.gather(*(c.closed for c in warm))
    await asyncio.sleep(0.5)
    before = rss_kb(pid)
    clients = await connect_clients(port, contexts, list(range(DEVICES)))
    await asyncio.sleep(1.0)
    after = rss_kb(pid)
    for client in clients:
        client.disconnect()
    await asyncio.gather(*(c.closed for c in clients))
    return (after - before) * 1024 / DEVICES / 1000


def main() -> None:
    with workdir() as folder:
        certs = make_certs(folder, DEVICES)
        with fleetpki_hub(certs) as (port, pid):
            fleet = uvloop.run(measure(port, pid, certs))
        with mosquitto(certs) as (port, pid):
            mosq = uvloop.run(measure(port, pid, certs))
    title = f"memory per idle TLS connection, {DEVICES} devices (RSS delta / n)"
    print(table(title, "KB/connection", fleet, mosq, higher_is_better=False))


if __name__ == "__main__":
    main()
