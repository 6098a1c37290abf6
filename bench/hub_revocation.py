"""Revocation to session close, p50 and p99 over 100 revocations (fleetpki only).

Run: ``.venv/bin/python bench/hub_revocation.py`` (a few seconds). 100 devices connect to
a hub running in a thread of this process; each certificate is revoked in turn through
the backend (as the control plane does), and the time from the revoke call's return to
the client seeing its connection closed is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import threading
import time
from pathlib import Path

import uvloop
from cryptography import x509

sys.path.insert(0, str(Path(__file__).parent))
from hub_common import client_context, connect_clients, make_certs, workdir

from fleetpki.hub.broker import Broker
from fleetpki.hub.memory import InMemoryHubBackend
from fleetpki.hub.server import HubServer
from fleetpki.hub.tls import hub_ssl_context

DEVICES = 100


def main() -> None:
    logging.getLogger("fleetpki.hub").setLevel(logging.ERROR)
    with workdir() as folder:
        certs = make_certs(folder, DEVICES)
        backend = InMemoryHubBackend()
        backend.trust_ca(x509.load_pem_x509_certificate(certs.ca.read_bytes()))
        for index in range(DEVICES):
            backend.add_device(f"dev{index}")
        server = HubServer(
            Broker(backend, hostnames=("localhost",)),
            hub_ssl_context(certs.server_cert, certs.server_key),
        )
        hub_loop = uvloop.new_event_loop()
        hub_loop.run_until_complete(server.start("127.0.0.1", 0))
        thread = threading.Thread(target=hub_loop.run_forever, daemon=True)
        thread.start()
        leaves = [
            x509.load_pem_x509_certificate(certs.device(i)[0].read_bytes()) for i in range(DEVICES)
        ]

        async def measure() -> list[float]:
            contexts = [client_context(certs, i) for i in range(DEVICES)]
            clients = await connect_clients(server.port, contexts, list(range(DEVICES)))
            delays = []
            for client, leaf in zip(clients, leaves, strict=True):
                closed_at: list[float] = []
                client.closed.add_done_callback(
                    lambda _f, out=closed_at: out.append(time.perf_counter())
                )
                # The revoke call runs in a worker thread, as a REST handler would.
                await asyncio.to_thread(backend.revoke, leaf)
                returned = time.perf_counter()
                await asyncio.wait_for(client.closed, 10)
                await asyncio.sleep(0)
                delays.append(max(0.0, closed_at[0] - returned))
            return delays

        delays = uvloop.run(measure())
        hub_loop.call_soon_threadsafe(hub_loop.stop)
        thread.join(10)
        hub_loop.run_until_complete(server.stop())
        hub_loop.close()
    ms = sorted(d * 1000 for d in delays)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"\nrevocation -> session closed, {len(ms)} revocations (fleetpki only)")
    print("| percentile | ms |\n|---|---|")
    print(f"| p50 | {p50:.2f} |\n| p99 | {p99:.2f} |\n| max | {ms[-1]:.2f} |")


if __name__ == "__main__":
    main()
