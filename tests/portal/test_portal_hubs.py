"""The hubs page in a real browser with a hub that cannot be reached.

An Azure link is added through the form (its Azure settings, a connection string);
one-click trust is refused with the connector's own message and code, as the API
gives them, never a stack trace (a connection string serves the device registry only); revocations the link cannot deliver are listed as failed rows
with their error, and the retry button queues them again; the "disable on revoke"
checkbox is saved. The server's own link workers are swapped for ones that give up
after two quick attempts, so that a delivery fails within the test.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import expect

from fleetpki.application import FleetPKI
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.delivery import Backoff
from fleetpki.services.link_workers import LinkWorkers
from support.browser import Screenshots, chromium, new_context
from support.hub_control import issue_device_certificate, issuing_ca
from support.mqtt_device import wait_until
from support.server import start_server

pytestmark = pytest.mark.slow

ADMIN = Actor.local_admin()
LINK = "down-hub"


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}"


@contextmanager
def _workers_that_give_up(fleet: FleetPKI) -> Iterator[LinkWorkers]:
    """The server's link workers replaced by ones that fail a delivery after two tries."""
    fleet.link_workers.stop()
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
    try:
        yield workers
    finally:
        workers.stop()


def test_unreachable_link_trust_refused_failed_rows_and_retry(tmp_path: Path) -> None:
    shots = Screenshots(tmp_path / "screenshots")
    down = _closed_port_url()
    with start_server(tmp_path / "home") as server, chromium() as browser:
        fleet = server.fleet
        issuing = issuing_ca(fleet)
        page = new_context(browser).new_page()
        page.goto(server.base_url + "/portal/signin")
        page.get_by_label("API token", exact=True).fill(server.admin_token)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Hubs").click()

        # -- add an Azure link through the form --------------------------------------------
        add = page.get_by_role("region", name="Add a hub link")
        add.get_by_label("Link name").fill(LINK)
        add.get_by_label("Kind").select_option("azure")
        add.get_by_label(f"{issuing.name} (issuing)").check()
        add.get_by_text("Azure IoT Hub settings").click()
        add.get_by_label("Subscription id").fill("5b6c8a8e-3f0e-4c5e-9a53-2c1f7b1f0d9e")
        add.get_by_label("Resource group").fill("rg")
        add.get_by_label("IoT hub name").fill(LINK)
        add.get_by_label("Management URL (empty: Azure's)").fill(down)
        add.get_by_label("Service API URL").fill(down)
        add.get_by_label("Credential").select_option("connection-string")
        add.get_by_label("Secret (client secret, connection string or certificate password)").fill(
            "HostName=down-hub.example;SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0"
        )
        add.get_by_role("button", name="Add link").click()
        expect(page.locator("main > p.notice")).to_have_text("The hub link is added.")
        [link] = fleet.hub_links.list(ADMIN)
        assert link.azure is not None and link.azure.service_url == down
        assert link.disable_on_revoke

        # -- one-click trust: a connection string cannot upload a CA; the page says so ----
        with page.expect_response(re.compile(r"/trust$")) as refused:
            page.get_by_role("button", name=f"Trust {issuing.name} in {LINK}").click()
        status = refused.value.status
        assert status == 502, status
        alert = page.locator("[role=alert]")
        expect(alert).to_contain_text("link.credential_missing")
        expect(alert).to_contain_text("need an Azure credential")
        expect(page.locator("main")).not_to_contain_text("Traceback")
        shots.save(page, "trust-refused")

        # -- revocations it cannot deliver become failed rows; retry queues them again ----
        with _workers_that_give_up(fleet) as workers:
            wait_until(lambda: LINK in workers.links, "the link's worker")
            serials = [issue_device_certificate(fleet, f"dev-{n}")[2].serial_hex for n in (1, 2)]
            for serial in serials:
                fleet.certificates.revoke(ADMIN, serial, RevocationReason.KEY_COMPROMISE)
            wait_until(
                lambda: fleet.hub_links.status(ADMIN, LINK)[0].backlog.failed == 2,
                "two failed deliveries",
            )
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Hubs").click()
        card = page.locator(f"#link-{LINK}")
        failed = card.get_by_role("table", name="Failed deliveries")
        expect(failed.locator("tbody tr")).to_have_count(2)
        for serial in serials:
            expect(failed).to_contain_text(serial)
        expect(failed).to_contain_text("link.unreachable")
        expect(card).to_contain_text("2 failed")
        shots.save(page, "hubs-failed")
        card.get_by_role("button", name="Retry failed deliveries").click()
        expect(page.locator("main > p.notice")).to_have_text(
            "The failed deliveries are queued again."
        )
        card = page.locator(f"#link-{LINK}")
        expect(card).to_contain_text("2 pending")
        expect(card).to_contain_text("0 failed")
        expect(card.get_by_role("button", name="Retry failed deliveries")).to_be_disabled()
        [after] = fleet.hub_links.status(ADMIN, LINK)
        assert (after.backlog.pending, after.backlog.failed) == (2, 0)

        # -- the "disable on revoke" checkbox is saved ------------------------------------
        card.get_by_label("Disable the IoT device when its certificate is revoked").uncheck()
        card.get_by_role("button", name="Save options").click()
        expect(page.locator("main > p.notice")).to_have_text("The link's options are saved.")
        assert not fleet.hub_links.get(ADMIN, LINK).disable_on_revoke
        expect(
            page.locator(f"#link-{LINK}").get_by_label(
                "Disable the IoT device when its certificate is revoked"
            )
        ).not_to_be_checked()
