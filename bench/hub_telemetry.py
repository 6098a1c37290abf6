"""Durable QoS 1 telemetry messages per second from 100 devices: fleetpki vs mosquitto.

Run: ``.venv/bin/python bench/hub_telemetry.py`` (about 15 s). Each device keeps
``WINDOW`` QoS 1 PUBLISHes in flight; a message counts when its PUBACK arrives. fleetpki
is ``fleetpki serve --only hub`` on a real home: it acknowledges only after the batch
holding the message is committed to the home's SQLite database (WAL,
``synchronous=NORMAL``) through the hub's message service; mosquitto runs with
``persistence false``, so it stores nothing.
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

DEVICES = 100
WINDOW = 20
SECONDS = 4.0


async def measure(port: int, certs: Certs) -> float:
    contexts = [client_context(certs, i) for i in range(DEVICES)]
    clients = await connect_clients(port, contexts, list(range(DEVICES)), WINDOW)
    started = time.perf_counter()
    for client in clients:
        client.start_sending()
    await asyncio.sleep(SECONDS)
    total = sum(c.acked for c in clients)
    elapsed = time.perf_counter() - started
    for client in clients:
        client.sending = False
        client.disconnect()
    await asyncio.gather(*(c.closed for c in clients))
    return total / elapsed


def main() -> None:
    with workdir() as folder:
        certs = make_certs(folder, DEVICES)
        with fleetpki_hub(certs) as (port, _):
            fleet = uvloop.run(measure(port, certs))
        with mosquitto(certs) as (port, _):
            mosq = uvloop.run(measure(port, certs))
    title = f"QoS 1 telemetry msgs/s, {DEVICES} devices, {WINDOW} in flight each"
    print(table(title, "msgs/s", fleet, mosq))


if __name__ == "__main__":
    main()
