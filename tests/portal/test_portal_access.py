"""The portal in a real browser for a user who is not an administrator, signed in by OIDC.

The OpenID provider is the certified npm package ``oidc-provider`` on the machine's
Node.js (tests/support/oidc_provider.py), reached by the portal's own client with the
authorization code flow and PKCE. Signed in, the user sees their own domains and no
other; forms they could not have been shown (a hub link, another owner's domain) are
refused with 403 and change nothing, and so is every form without this browser's CSRF
token. Sign-out ends the session for good.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from fleetpki.api.background import free_port
from fleetpki.services import Actor
from fleetpki.services.enrollment import MemberRef
from support.browser import Screenshots, chromium, new_context
from support.oidc_provider import start_provider
from support.server import LiveServer, start_server

pytestmark = pytest.mark.slow

CLIENT_ID = "fleetpki-portal"
USER = "alice"


def _sign_in_with_oidc(page: Page, server: LiveServer, login: str) -> None:
    """Through the provider's own login and consent pages, back to the dashboard."""
    page.goto(server.base_url + "/portal/certificates")
    expect(page).to_have_url(re.compile(r"/portal/signin\?next="))
    page.get_by_role("link", name="Sign in with OpenID Connect").click()
    # The provider's development login page: any login name, any password.
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill("any password")
    page.get_by_role("button", name="Sign-in").click()
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Certificates")


def _csrf(page: Page) -> str:
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    return token


def test_oidc_user_sees_own_domains_and_is_refused_elsewhere(tmp_path: Path) -> None:
    shots = Screenshots(tmp_path / "screenshots")
    provider_port = free_port()
    issuer = f"http://127.0.0.1:{provider_port}"
    with (
        start_server(
            tmp_path / "home", oidc_issuer=issuer, portal_oidc_client_id=CLIENT_ID
        ) as server,
        start_provider(provider_port, CLIENT_ID, server.base_url + "/portal/signin/oidc/callback"),
        chromium() as browser,
    ):
        fleet = server.fleet
        admin = Actor.local_admin()
        context = new_context(browser)
        page = context.new_page()

        # -- sign in at the OpenID provider: code flow with PKCE --------------------------
        page.goto(server.base_url + "/portal/signin")
        expect(page.get_by_role("link", name="Sign in with OpenID Connect")).to_be_visible()
        _sign_in_with_oidc(page, server, USER)
        session = next(c for c in context.cookies() if c["name"] == "__Host-fleetpki-session")
        assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
        assert not any(c["name"] == "__Host-fleetpki-oidc" for c in context.cookies())
        # A principal named by the provider's `sub`, as the API would name it; not an admin.
        alice = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{issuer}#{USER}"))
        assert page.locator(".who").inner_text() == USER
        nav = page.get_by_role("navigation", name="Main")
        expect(nav.get_by_role("link", name="Hubs")).to_have_count(0)
        expect(nav.get_by_role("link", name="Audit log")).to_have_count(0)

        # -- the administrator's domains: one of hers, one she requests for, one foreign --
        def register(name: str, owners: list[str], requesters: list[str]) -> str:
            return fleet.enrollment.register_domain(
                admin,
                ca_id=None,
                template_id=None,
                name=name,
                owners=[MemberRef(p) for p in owners],
                requesters=[MemberRef(p) for p in requesters],
            ).id

        admin_id = admin.principal_id
        own = register("sensor-own", [alice], [])
        shared = register("sensor-shared", [admin_id], [alice])
        foreign = register("sensor-foreign", [admin_id], [])

        page.get_by_role("navigation", name="Main").get_by_role("link", name="Domains").click()
        listing = page.locator("main table tbody")
        expect(listing).to_contain_text("sensor-own")
        expect(listing).to_contain_text("sensor-shared")
        expect(listing).not_to_contain_text("sensor-foreign")
        expect(page.get_by_role("heading", name="Your domains (2)")).to_be_visible()
        shots.save(page, "domains-user")

        # A foreign domain is not found (its existence is not told), even by its address.
        answer = page.goto(f"{server.base_url}/portal/domains/{foreign}")
        assert answer is not None and answer.status == 404
        expect(page.locator("[role=alert]")).to_contain_text("domain.not_found")
        expect(page.locator("main")).not_to_contain_text("sensor-foreign")

        # A domain she only requests for shows no members form.
        page.goto(f"{server.base_url}/portal/domains/{shared}")
        expect(page.get_by_role("heading", name="sensor-shared")).to_be_visible()
        expect(page.get_by_role("region", name="Owners and requesters")).to_have_count(0)

        # -- forged forms, with her own valid CSRF token: 403, nothing changed ------------
        token = _csrf(page)
        forged_link = page.request.post(
            f"{server.base_url}/portal/hubs/links",
            form={"csrf_token": token, "name": "evil", "kind": "builtin"},
            max_redirects=0,
        )
        assert forged_link.status == 403, forged_link.text()
        assert "auth.admin_required" in forged_link.text()
        assert fleet.hub_links.list(admin) == []
        forged_members = page.request.post(
            f"{server.base_url}/portal/domains/{shared}/members",
            form={"csrf_token": token, "owners": alice, "requesters": ""},
            max_redirects=0,
        )
        assert forged_members.status == 403, forged_members.text()
        assert "domain.not_owner" in forged_members.text()
        assert fleet.domains.get(admin, shared).owners == (admin_id,)
        hubs_page = page.goto(f"{server.base_url}/portal/hubs")
        assert hubs_page is not None and hubs_page.status == 403
        expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
        shots.save(page, "forbidden")

        # -- her own domain's members form, without and with a wrong CSRF token -----------
        page.goto(f"{server.base_url}/portal/domains/{own}")
        members = page.get_by_role("region", name="Owners and requesters")
        members.get_by_label("Requesters").fill(admin_id)
        members.locator("input[name=csrf_token]").evaluate("input => input.remove()")
        with page.expect_response(re.compile(r"/members$")) as refused:
            members.get_by_role("button", name="Save").click()
        assert refused.value.status == 403
        expect(page.locator("[role=alert]")).to_contain_text("portal.csrf_missing")
        shots.save(page, "csrf-refused")
        assert fleet.domains.get(admin, own).requesters == ()

        page.goto(f"{server.base_url}/portal/domains/{own}")
        members = page.get_by_role("region", name="Owners and requesters")
        members.get_by_label("Requesters").fill(admin_id)
        members.locator("input[name=csrf_token]").evaluate(
            "input => input.value = 'x' + input.value"
        )
        with page.expect_response(re.compile(r"/members$")) as refused:
            members.get_by_role("button", name="Save").click()
        assert refused.value.status == 403
        expect(page.locator("[role=alert]")).to_contain_text("portal.csrf_mismatch")
        assert fleet.domains.get(admin, own).requesters == ()

        # With its token the same form works: the refusals above were the token's.
        page.goto(f"{server.base_url}/portal/domains/{own}")
        members = page.get_by_role("region", name="Owners and requesters")
        members.get_by_label("Requesters").fill(admin_id)
        members.get_by_role("button", name="Save").click()
        expect(page.locator("main > p.notice")).to_have_text(
            "The domain's owners and requesters are saved."
        )
        assert fleet.domains.get(admin, own).requesters == (admin_id,)

        # -- sign out: the session is over, its cookie opens nothing ----------------------
        old = next(c for c in context.cookies() if c["name"] == "__Host-fleetpki-session")
        page.get_by_role("button", name="Sign out").click()
        expect(page.locator("main > p.notice")).to_have_text("You are signed out.")
        context.add_cookies([old])
        page.goto(server.base_url + "/portal/domains")
        expect(page).to_have_url(re.compile(r"/portal/signin\?next="))
        context.close()


def test_a_link_added_by_an_admin_form_needs_the_token(tmp_path: Path) -> None:
    """A cross-site form (no cookie of ours, no token) adds nothing, even for an admin."""
    with start_server(tmp_path / "home") as server, chromium() as browser:
        context = new_context(browser)
        page = context.new_page()
        page.goto(server.base_url + "/portal/signin")
        page.get_by_label("API token", exact=True).fill(server.admin_token)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        answer = page.request.post(
            f"{server.base_url}/portal/hubs/links",
            form={"name": "no-token", "kind": "builtin"},
            max_redirects=0,
        )
        assert answer.status == 403
        assert "portal.csrf_missing" in answer.text()
        assert server.fleet.hub_links.list(Actor.local_admin()) == []
        context.close()
