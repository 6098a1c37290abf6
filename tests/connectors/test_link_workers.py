"""``fleetpki serve`` delivers to every stored hub link; status and retry show and requeue.

The first test is the whole path a user takes: a stored azure link to a fleetpki hub
(its management URL, service URL and CA bundle, a client-secret credential against the
hub's token endpoint), one-click trust through the unmodified Azure SDKs, and a
revocation that the server's own link worker carries to the hub. The others use a link
whose hub cannot be reached, so that deliveries fail, are given up on, and are requeued.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetpki.application import FleetPKI
from fleetpki.errors import FleetPKIError
from fleetpki.hub.policy import DeviceStatus
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.context import LOCAL_ADMIN_ID
from fleetpki.services.delivery import Backoff
from fleetpki.services.hub_devices import DeviceSpec
from fleetpki.services.hub_links import LinkCommand, link_command
from fleetpki.services.link_workers import LinkWorkers
from support.api import row_counts
from support.azure_hub import Hub, hub_fixture  # noqa: F401
from support.hub_control import issue_device_certificate, issuing_ca

pytestmark = pytest.mark.slow

ADMIN = Actor.local_admin()


def _wait(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _self_link(hub: Hub, name: str = "self") -> LinkCommand:
    """The link a user adds to reach this fleetpki hub as Azure's APIs reach a hub."""
    server = hub.server
    return link_command(
        name,
        "azure",
        ca_ids=[issuing_ca(server.fleet).id],
        subscription_id=hub.identity.subscription_id,
        resource_group=hub.identity.resource_group,
        hub_name=hub.identity.hub_name,
        management_url=server.base_url,
        service_url=server.base_url,
        ca_bundle=str(server.ca_bundle),
        credential="client-secret",
        tenant_id=hub.identity.tenant_id,
        client_id=LOCAL_ADMIN_ID,
        authority_host=server.base_url,
        secret=server.admin_token,
    )


def test_serve_delivers_a_revocation_to_a_link_added_while_it_runs(hub: Hub) -> None:
    fleet = hub.server.fleet
    link = fleet.hub_links.add(ADMIN, _self_link(hub))
    assert link.azure is not None and link.azure.service_url == hub.server.base_url
    trusted = fleet.hub_links.trust(ADMIN, "self", issuing_ca(fleet).id)
    assert trusted.verified
    # The server's link workers follow the links: this one got a worker.
    _wait(lambda: "self" in fleet.link_workers.links, "the link's worker")

    fleet.hub_devices.put(DeviceSpec("dev-served"))
    _, _, stored = issue_device_certificate(fleet, "dev-served")
    fleet.certificates.revoke(ADMIN, stored.serial_hex, RevocationReason.KEY_COMPROMISE)
    _wait(
        lambda: fleet.hub_devices.get("dev-served").status == DeviceStatus.DISABLED.value,
        "the device to be disabled through the link",
    )
    [status] = fleet.hub_links.status(ADMIN, "self")
    _wait(lambda: fleet.hub_links.status(ADMIN, "self")[0].backlog.pending == 0, "no backlog")
    assert status.failed == ()

    fleet.hub_links.remove(ADMIN, "self")
    _wait(lambda: "self" not in fleet.link_workers.links, "the worker to stop")


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}"


def _unreachable_link(fleet: FleetPKI, name: str) -> LinkCommand:
    url = _closed_port_url()
    return link_command(
        name,
        "azure",
        ca_ids=[issuing_ca(fleet).id],
        subscription_id="5b6c8a8e-3f0e-4c5e-9a53-2c1f7b1f0d9e",
        resource_group="rg",
        hub_name="down-hub",
        management_url=url,
        service_url=url,
        credential="connection-string",
        secret="HostName=down-hub.example;SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0",
    )


@pytest.fixture(name="failing_workers")
def failing_workers_fixture(fleet: FleetPKI) -> Iterator[LinkWorkers]:
    """Link workers that give up after two quick attempts."""
    workers = LinkWorkers(
        fleet.hub_links,
        fleet.store,
        fleet.now,
        fleet.events,
        fleet.keystore,
        start_consumer=fleet.start_consumer,
        stop_consumer=fleet.stop_consumer,
        max_attempts=2,
        backoff=Backoff(base=0.02, cap=0.05),
        resync=0.2,
    )
    workers.start()
    yield workers
    workers.stop()


def test_a_link_that_stays_down_fails_its_deliveries_and_retry_requeues_them(
    fleet: FleetPKI, failing_workers: LinkWorkers
) -> None:
    fleet.hub_links.add(ADMIN, _unreachable_link(fleet, "down"))
    fleet.hub_links.add(ADMIN, link_command("local", "builtin"))
    _wait(lambda: set(failing_workers.links) == {"down", "local"}, "both workers")
    serials = [issue_device_certificate(fleet, f"dev-f{n}")[2].serial_hex for n in range(3)]
    for serial in serials:
        fleet.certificates.revoke(ADMIN, serial, RevocationReason.KEY_COMPROMISE)
    _wait(
        lambda: fleet.hub_links.status(ADMIN, "down")[0].backlog.failed == 3,
        "three failed deliveries",
    )
    down, local = fleet.hub_links.status(ADMIN)
    assert (down.link, local.link) == ("down", "local")
    assert down.backlog.pending == 0
    assert {f.subject_id for f in down.failed} == set(serials)
    assert all(f.attempts == 2 for f in down.failed)
    assert all("link.unreachable" in (f.last_error or "") for f in down.failed)
    # A link that trusts no CA has nothing to deliver; a failing link delays only itself.
    assert (local.backlog.pending, local.backlog.failed) == (0, 0)

    failing_workers.stop()  # so the requeued rows stay visible as pending
    [retried] = fleet.hub_links.retry(ADMIN, "down")
    assert retried.requeued == 3
    [after] = fleet.hub_links.status(ADMIN, "down")
    assert (after.backlog.pending, after.backlog.failed, after.failed) == (3, 0, ())
    assert fleet.hub_links.retry(ADMIN, "down")[0].requeued == 0


def test_a_link_added_while_no_server_runs_keeps_its_events(fleet: FleetPKI) -> None:
    """The link is subscribed when it is added, not when a worker first starts."""
    fleet.hub_links.add(ADMIN, _unreachable_link(fleet, "later"))
    _, _, stored = issue_device_certificate(fleet, "dev-later")
    fleet.certificates.revoke(ADMIN, stored.serial_hex, RevocationReason.KEY_COMPROMISE)
    [status] = fleet.hub_links.status(ADMIN, "later")
    assert status.backlog.pending == 2  # the device's domain registered, its certificate revoked
    fleet.hub_links.remove(ADMIN, "later")
    with pytest.raises(FleetPKIError) as info:
        fleet.hub_links.status(ADMIN, "later")
    assert info.value.code == "link.not_found"


def test_status_and_retry_of_an_unknown_link_or_by_a_non_admin_change_nothing(
    fleet: FleetPKI,
) -> None:
    fleet.hub_links.add(ADMIN, link_command("local", "builtin"))
    stranger = Actor("22222222-2222-4222-8222-222222222222", is_admin=False, source="test")
    before = row_counts(fleet)
    for call, code in [
        (lambda: fleet.hub_links.status(ADMIN, "nope"), "link.not_found"),
        (lambda: fleet.hub_links.retry(ADMIN, "nope"), "link.not_found"),
        (lambda: fleet.hub_links.status(stranger), "auth.admin_required"),
        (lambda: fleet.hub_links.retry(stranger, "local"), "auth.admin_required"),
    ]:
        with pytest.raises(FleetPKIError) as info:
            call()
        assert info.value.code == code
    assert row_counts(fleet) == before


def test_a_bad_ca_bundle_or_service_url_is_refused_and_changes_nothing(
    fleet: FleetPKI, tmp_path: Path
) -> None:
    not_pem = tmp_path / "bundle.txt"
    not_pem.write_text("not a certificate\n")
    before = row_counts(fleet)
    base = _unreachable_link(fleet, "x")
    assert base.azure is not None
    for changes, code in [
        ({"ca_bundle": str(not_pem)}, "link.ca_bundle_missing"),
        ({"ca_bundle": "relative.pem"}, "link.ca_bundle_missing"),
        ({"service_url": "http://h:80"}, "link.bad_url"),
    ]:
        target = dataclasses.replace(base.azure, **changes)
        command = LinkCommand(base.name, base.kind, base.ca_ids, azure=target, secret=base.secret)
        with pytest.raises(FleetPKIError) as info:
            fleet.hub_links.add(ADMIN, command)
        assert info.value.code == code
    assert row_counts(fleet) == before
