"""The portal for people: keyboard only, local times with UTC on hover, tables that page
at 50 rows, and bad input refused with the API's code and message, nothing changed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from fleetpki.services import Actor
from fleetpki.services.enrollment import MemberRef
from support.browser import Screenshots, chromium, new_context
from support.hub_control import issue_device_certificate
from support.server import LiveServer, start_server

pytestmark = pytest.mark.slow

ADMIN = Actor.local_admin()


def _sign_in_by_keyboard(page: Page, server: LiveServer) -> None:
    """Sign in with the keyboard alone: the skip link first, then the token field."""
    page.goto(server.base_url + "/portal/signin")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.get_by_label("API token", exact=True)).to_be_focused()
    page.keyboard.type(server.admin_token)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


def test_keyboard_local_times_paging_and_refusals(tmp_path: Path) -> None:
    shots = Screenshots(tmp_path / "screenshots")
    with start_server(tmp_path / "home") as server, chromium() as browser:
        fleet = server.fleet
        page = new_context(browser).new_page()
        _sign_in_by_keyboard(page, server)

        # -- times: the browser's zone on the page, UTC in the title ----------------------
        page.goto(server.base_url + "/portal/cas")
        page.get_by_role("link", name="fleetpki Issuing CA").click()
        valid = page.locator("time[data-local]").first
        expect(valid).to_have_attribute(
            "title", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
        )
        # The test's browser runs in Europe/Berlin (tests/support/browser.py).
        expect(valid).to_contain_text(re.compile(r"CET|CEST|GMT\+1|GMT\+2"))

        # -- tables page at 50 rows -------------------------------------------------------
        for n in range(53):
            fleet.enrollment.register_domain(
                ADMIN,
                ca_id=None,
                template_id=None,
                name=f"sensor-{n:03d}",
                owners=[MemberRef(ADMIN.principal_id)],
                requesters=[],
            )
        page.goto(server.base_url + "/portal/domains")
        rows = page.locator("main table tbody tr")
        expect(rows).to_have_count(50)
        expect(page.get_by_role("heading", name="All domains (53)")).to_be_visible()
        pager = page.get_by_role("navigation", name="Domain pages")
        expect(pager.get_by_role("link", name="Previous 50")).to_have_count(0)
        pager.get_by_role("link", name="Next 50 →").click()
        expect(rows).to_have_count(3)
        expect(rows.first).to_contain_text("sensor-050")
        expect(page.get_by_role("navigation", name="Domain pages")).to_contain_text("Page 2")
        shots.save(page, "domains-page-2")

        # -- bad input: the API's code and message, a 4xx, nothing changed ---------------
        page.goto(server.base_url + "/portal/domains")
        register = page.get_by_role("region", name="Register a domain")
        register.get_by_label("Device id or DNS name").fill("not a device id!")
        with page.expect_response(re.compile(r"/portal/domains$")) as refused:
            register.get_by_role("button", name="Register").click()
        assert 400 <= refused.value.status < 500
        alert = page.locator("[role=alert]")
        expect(alert).to_contain_text("domain.invalid_name")
        expect(page.locator("main")).not_to_contain_text("Traceback")
        assert len(fleet.domains.list(ADMIN)) == 53

        # The same name again is a conflict, as in the API.
        page.goto(server.base_url + "/portal/domains")
        register = page.get_by_role("region", name="Register a domain")
        register.get_by_label("Device id or DNS name").fill("sensor-001")
        with page.expect_response(re.compile(r"/portal/domains$")) as refused:
            register.get_by_role("button", name="Register").click()
        assert refused.value.status == 409
        expect(page.locator("[role=alert]")).to_contain_text("domain.exists")
        assert len(fleet.domains.list(ADMIN)) == 53

        # Search filters that are not what they should be: 4xx with the field named.
        answer = page.goto(server.base_url + "/portal/certificates?expiring=soon")
        assert answer is not None and 400 <= answer.status < 500
        expect(page.locator("[role=alert]")).to_contain_text("portal.bad_days")
        answer = page.goto(server.base_url + "/portal/audit?since=yesterday")
        assert answer is not None and 400 <= answer.status < 500
        expect(page.locator("[role=alert]")).to_contain_text("audit.bad_time")
        answer = page.goto(server.base_url + "/portal/certificates?serial=00ff")
        assert answer is not None and answer.status == 404
        expect(page.locator("[role=alert]")).to_contain_text("certificate.not_found")
        # A revocation without its confirmation ticked: refused, the certificate valid.
        _, _, stored = issue_device_certificate(fleet, "dev-unconfirmed")
        page.goto(f"{server.base_url}/portal/certificates/{stored.serial_hex}/revoke")
        page.get_by_role("button", name="Revoke the certificate").evaluate(
            "button => button.form.noValidate = true"
        )
        with page.expect_response(re.compile(r"/revoke$")) as refused:
            page.get_by_role("button", name="Revoke the certificate").click()
        assert refused.value.status == 400
        expect(page.locator("[role=alert]")).to_contain_text("portal.not_confirmed")
        assert fleet.certificates.get(ADMIN, stored.serial_hex).status == "valid"

        # -- certificate search: by serial straight to it, by domain, status and expiry ----
        page.goto(server.base_url + "/portal/certificates")
        page.get_by_label("Serial").fill(stored.serial_hex.lower())
        page.get_by_role("button", name="Search").click()
        expect(page).to_have_url(re.compile(f"/portal/certificates/{stored.serial_hex}$"))
        results = page.locator("#results tbody tr")

        def search(query: str) -> None:
            page.goto(f"{server.base_url}/portal/certificates?domain=dev-unconfirmed&{query}")
            # The form shows the filters it was sent with.
            expect(page.get_by_label("Domain", exact=True)).to_have_value("dev-unconfirmed")

        search("status=valid")
        expect(page.get_by_label("Status")).to_have_value("valid")
        expect(results).to_have_count(1)
        expect(results).to_contain_text(stored.serial_hex)
        search("status=revoked")
        expect(results).to_have_text(["No certificates."])
        search("expiring=400")
        expect(page.get_by_label("Expiring within (days)")).to_have_value("400")
        expect(results).to_have_count(1)
        expect(results).to_contain_text(stored.serial_hex)
        search("expiring=1")
        expect(results).to_have_text(["No certificates."])

        answer = page.goto(server.base_url + "/portal/domains?page=-1")
        assert answer is not None and answer.status == 422
        expect(page.locator("[role=alert]")).to_contain_text("request.invalid")


def test_the_pages_work_without_javascript(tmp_path: Path) -> None:
    """Plain forms and links: sign in, register a domain, search, sign out, no script."""
    with start_server(tmp_path / "home") as server, chromium() as browser:
        context = new_context(browser, javascript=False)
        page = context.new_page()
        page.goto(server.base_url + "/portal/signin")
        page.get_by_label("API token", exact=True).fill(server.admin_token)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        # Without the script, times stay in UTC.
        page.get_by_role("navigation", name="Main").get_by_role("link", name="CAs").click()
        page.get_by_role("link", name="fleetpki Issuing CA").click()
        expect(page.locator("time[data-local]").first).to_contain_text(" UTC")
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Domains").click()
        register = page.get_by_role("region", name="Register a domain")
        register.get_by_label("Device id or DNS name").fill("sensor-nojs")
        register.get_by_role("button", name="Register").click()
        expect(page.locator("main > p.notice")).to_have_text("The domain is registered.")
        assert [d.name for d in server.fleet.domains.list(ADMIN)] == ["sensor-nojs"]
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Certificates").click()
        page.get_by_label("Status").select_option("valid")
        page.get_by_role("button", name="Search").click()
        expect(page).to_have_url(re.compile(r"status=valid"))
        page.get_by_role("button", name="Sign out").click()
        expect(page.locator("main > p.notice")).to_have_text("You are signed out.")
        context.close()
