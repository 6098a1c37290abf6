"""Revocation to session close, p50 and p99 over 100 revocations, through the real stack.

Run: ``.venv/bin/python bench/hub_revocation.py`` (about 10 seconds). A fleetpki home is
made in a temporary folder; 100 devices get certificates from its issuing CA and are
registered in the hub, whose CA is trusted by proof of possession; the hub runs on the
database-backed registry (as under ``fleetpki serve``) in a thread of this process.
Each certificate is then revoked in turn with the revocation service, in a worker
thread as an HTTP handler would, and the time from the service call's return to the
client seeing its connection closed is recorded.  fleetpki only: no peer revokes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import statistics
import sys
import threading
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).parent))
from hub_common import connect_clients, workdir

from fleetpki.application import FleetPKI, init_home
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.hub_devices import DeviceSpec
from fleetpki.settings import Settings

DEVICES = 100
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from support.hub import issue_device  # noqa: E402 - the tests' device helper


def _prepare(folder: Path) -> tuple[FleetPKI, list[tuple[str, ssl.SSLContext]]]:
    settings = Settings.default_for(folder / "home").with_changes(
        key_passphrase_file=str(folder / "key-passphrase")
    )
    fleet = init_home(settings).app
    fleet.hub_trust.trust_local_ca(fleet.cas.current_issuer().id)
    devices: list[tuple[str, ssl.SSLContext]] = []
    for index in range(DEVICES):
        files = issue_device(fleet, f"dev{index}", folder)
        fleet.hub_devices.put(DeviceSpec(device_id=f"dev{index}"))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = (
            ssl.CERT_NONE
        )  # the load client measures, it does not judge the server
        context.load_cert_chain(files.cert, files.key)
        devices.append((format(files.certificate.serial_number, "X"), context))
    return fleet, devices


def _revoke(fleet: FleetPKI, serial: str) -> None:
    fleet.certificates.revoke(Actor.local_admin(), serial, RevocationReason.KEY_COMPROMISE)


def main() -> None:
    logging.getLogger("fleetpki.hub").setLevel(logging.ERROR)
    from fleetpki.hub.server import start_hub

    with workdir() as folder:
        fleet, devices = _prepare(folder)
        hub_loop = uvloop.new_event_loop()
        stop = hub_loop.run_until_complete(start_hub(fleet, host="127.0.0.1", port=0, amqp_port=-1))
        port = stop.__self__.port  # type: ignore[attr-defined]
        thread = threading.Thread(target=hub_loop.run_forever, daemon=True)
        thread.start()

        async def measure() -> list[float]:
            clients = await connect_clients(port, [c for _, c in devices], list(range(DEVICES)))
            delays = []
            for client, (serial, _) in zip(clients, devices, strict=True):
                closed_at: list[float] = []
                client.closed.add_done_callback(
                    lambda _f, out=closed_at: out.append(time.perf_counter())
                )
                await asyncio.to_thread(_revoke, fleet, serial)
                returned = time.perf_counter()
                await asyncio.wait_for(client.closed, 10)
                await asyncio.sleep(0)
                delays.append(closed_at[0] - returned)
            return delays

        try:
            delays = uvloop.run(measure())
        finally:
            asyncio.run_coroutine_threadsafe(stop(), hub_loop).result(15)
            hub_loop.call_soon_threadsafe(hub_loop.stop)
            thread.join(10)
            hub_loop.close()
            fleet.close()
    ms = sorted(d * 1000 for d in delays)
    before = sum(1 for d in ms if d <= 0)
    p50 = statistics.median(ms)
    p99 = ms[math.ceil(len(ms) * 0.99) - 1]  # nearest rank: the 99th of 100
    print(
        f"\nrevocation -> session closed, {len(ms)} revocations through the service (fleetpki only)"
    )
    print("negative: the session was closed before the revoke call returned (after its commit)")
    print("| percentile | ms |\n|---|---|")
    print(f"| p50 | {p50:.2f} |\n| p99 | {p99:.2f} |\n| max | {ms[-1]:.2f} |")
    print(f"closed before the call returned: {before} of {len(ms)}")


if __name__ == "__main__":
    main()
