"""Nothing is lost between a revocation and a linked hub: a hub that is down, a killed server.

Both on SQLite and on PostgreSQL. The linked hub is a real ``fleetpki serve`` reached
through the ``azure`` connector; the link's deliveries are the outbox rows written with
each revocation, so neither a hub that refuses connections for a while nor a process
killed with SIGKILL right after the revocation's commit can lose one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from fleetpki.hub.policy import DeviceStatus
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.delivery import Backoff
from fleetpki.services.hub_devices import DeviceSpec
from fleetpki.services.link_delivery import (
    LINK_EVENT_TYPES,
    LinkDelivery,
    LinkTarget,
    link_consumer,
)
from support.azure_hub import Hub
from support.hub_control import issue_device_certificate, issuing_ca
from support.server import start_server

pytestmark = pytest.mark.slow

REVOCATIONS = 1000


@pytest.fixture(name="durable_hub")
def durable_hub_fixture(tmp_path: Path, database_url: str, key_passphrase: None) -> Iterator[Hub]:
    with start_server(
        tmp_path / "home", database_url=database_url, token_endpoint_enabled=True
    ) as server:
        fleet = server.fleet
        cas = {c.tier: c for c in fleet.cas.list()}
        key_refs = {}
        with fleet.store.transaction() as tx:  # no use case hands out a CA's key reference
            for tier, ca in cas.items():
                record = tx.cas.get(ca.id)
                assert record is not None
                key_refs[tier] = record.key_ref
        with ExitStack() as opened:
            yield Hub(server, fleet.hub_management.show(), cas, key_refs, opened)


def _closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}"


def _target(hub: Hub) -> LinkTarget:
    return LinkTarget(name="azure-1", ca_ids=frozenset({issuing_ca(hub.server.fleet).id}))


def _run(hub: Hub, link: LinkDelivery, backoff: Backoff | None = None) -> Callable[[], None]:
    fleet = hub.server.fleet
    worker = fleet.start_consumer(
        link_consumer(link.target.name),
        LINK_EVENT_TYPES,
        link,
        poll=0.05,
        backoff=backoff or Backoff(base=0.05, cap=0.5),
    )
    return lambda: fleet.stop_consumer(worker)


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _statuses(hub: Hub, devices: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for device in hub.server.fleet.hub_devices.list():
        if device.device_id in devices:
            counts[device.status] = counts.get(device.status, 0) + 1
    return counts


def test_a_hub_down_during_1000_revocations_disables_all_once_back(durable_hub: Hub) -> None:
    hub = durable_hub
    fleet = hub.server.fleet
    up = hub.connector()
    up.trust_ca("fleet-issuing", hub.pem("issuing"), hub.prover("issuing"))
    devices = [f"dev-{n:04d}" for n in range(REVOCATIONS)]
    serials = []
    for device_id in devices:
        fleet.hub_devices.put(DeviceSpec(device_id))
        serials.append(issue_device_certificate(fleet, device_id)[2].serial_hex)
    target = _target(hub)
    down = hub.connector(management_url=_closed_url(), service_url=_closed_url())
    consumer = link_consumer(target.name)

    # Retries against the hub that is down back off for seconds, as in production (with
    # a fifth of a second they would keep the database's one writer busy).
    stop = _run(
        hub,
        LinkDelivery(fleet.store, fleet.now, target, down, keystore=fleet.keystore),
        Backoff(base=2, cap=5),
    )
    try:
        for serial in serials:
            fleet.certificates.revoke(Actor.local_admin(), serial, RevocationReason.KEY_COMPROMISE)
        _wait(
            lambda: fleet.delivery.backlog(consumer).failing == REVOCATIONS,
            "every delivery tried against the hub that is down",
        )
    finally:
        stop()
    assert _statuses(hub, devices) == {DeviceStatus.ENABLED.value: REVOCATIONS}
    assert "link.unreachable" in (fleet.delivery.backlog(consumer).last_error or "")

    stop = _run(hub, LinkDelivery(fleet.store, fleet.now, target, up, keystore=fleet.keystore))
    try:
        _wait(lambda: fleet.delivery.backlog(consumer).pending == 0, "the backlog delivered")
    finally:
        stop()
    backlog = fleet.delivery.backlog(consumer)
    assert (backlog.pending, backlog.failed) == (0, 0)  # 0 events lost, none given up on
    assert _statuses(hub, devices) == {DeviceStatus.DISABLED.value: REVOCATIONS}


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from fleetpki.application import FleetPKI
    from fleetpki.pki.revocation import RevocationReason
    from fleetpki.services import Actor
    from fleetpki.services.notifications import EventsWritten
    from fleetpki.settings import Settings

    fleet = FleetPKI.open(Settings.load(__import__("pathlib").Path(sys.argv[1])), migrate=False)

    def die(notification):
        # Published after the commit, before any consumer could deliver: die here.
        if isinstance(notification, EventsWritten):
            os.kill(os.getpid(), signal.SIGKILL)

    fleet.events.subscribe(die)
    fleet.certificates.revoke(Actor.local_admin(), sys.argv[2], RevocationReason.KEY_COMPROMISE)
    print("not killed")
    """
)


def test_a_server_killed_after_the_commit_delivers_after_restart(durable_hub: Hub) -> None:
    hub = durable_hub
    fleet = hub.server.fleet
    connector = hub.connector()
    connector.trust_ca("fleet-issuing", hub.pem("issuing"), hub.prover("issuing"))
    fleet.hub_devices.put(DeviceSpec("dev-killed"))
    serial = issue_device_certificate(fleet, "dev-killed")[2].serial_hex
    target = _target(hub)
    consumer = link_consumer(target.name)
    fleet.delivery.register(consumer, LINK_EVENT_TYPES)

    args = [sys.executable, "-c", _KILLER, str(fleet.settings.home), serial]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert "not killed" not in done.stdout
    assert fleet.certificates.get(Actor.local_admin(), serial).status == "revoked"
    assert fleet.delivery.backlog(consumer).pending == 1  # committed, not delivered
    assert fleet.hub_devices.get("dev-killed").status == DeviceStatus.ENABLED.value

    stop = _run(
        hub, LinkDelivery(fleet.store, fleet.now, target, connector, keystore=fleet.keystore)
    )  # the restart
    try:
        _wait(lambda: fleet.delivery.backlog(consumer).pending == 0, "delivered after restart")
    finally:
        stop()
    assert fleet.hub_devices.get("dev-killed").status == DeviceStatus.DISABLED.value
