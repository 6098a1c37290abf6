"""The services behind the portal: sessions, the pages' reads, daily activity, audit
search, link options; each refusal with its code and nothing changed."""

from __future__ import annotations

import datetime as dt

import pytest

from conftest import ALICE
from fleetpki.application import FleetPKI
from fleetpki.errors import FleetPKIError
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services.audit import AuditQuery
from fleetpki.services.context import Actor
from fleetpki.services.hub_links import link_command
from fleetpki.services.portal_sessions import PortalSessionService, csrf_token_for
from support.api import row_counts
from support.hub_control import issue_device_certificate, issuing_ca

ADMIN = Actor.local_admin()
ALICE_ACTOR = Actor(ALICE, source="test")


class _Clock:
    """A clock the test moves."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now


def _code(call: object) -> str:
    assert callable(call)
    with pytest.raises(FleetPKIError) as caught:
        call()
    return caught.value.code


# -- sessions -----------------------------------------------------------------------------


def test_a_session_resumes_until_it_expires_or_is_signed_out(fleet: FleetPKI) -> None:
    clock = _Clock(fleet.now())
    sessions = PortalSessionService(fleet.store, clock, lifetime=dt.timedelta(hours=1))
    token = fleet.principals.create_token(ADMIN, ALICE)
    started = sessions.sign_in_with_token(token.secret, source="test")
    assert started.session.principal.id == ALICE and started.session.method == "token"
    assert sessions.resume(started.secret).principal.id == ALICE

    clock.now += dt.timedelta(minutes=59)
    assert sessions.resume(started.secret).principal.id == ALICE
    clock.now += dt.timedelta(minutes=2)
    assert _code(lambda: sessions.resume(started.secret)) == "portal.session_expired"

    again = sessions.sign_in_with_token(token.secret, source="test")
    assert again.secret != started.secret
    assert sessions.sign_out(again.secret, source="test") is True
    assert _code(lambda: sessions.resume(again.secret)) == "portal.signed_out"
    assert sessions.sign_out(again.secret, source="test") is False
    actions = [e.action for e in fleet.audit.search(ADMIN, AuditQuery(action="portal"))]
    assert actions.count("portal.sign_in") == 2 and actions.count("portal.sign_out") == 1


def test_a_session_ends_when_its_token_expires(fleet: FleetPKI) -> None:
    clock = _Clock(fleet.now())
    sessions = PortalSessionService(fleet.store, clock, lifetime=dt.timedelta(hours=8))
    token = fleet.principals.create_token(ADMIN, ALICE, lifetime=dt.timedelta(minutes=30))
    started = sessions.sign_in_with_token(token.secret, source="test")
    assert started.session.expires_at == token.expires_at
    clock.now += dt.timedelta(minutes=29)
    assert sessions.resume(started.secret).principal.id == ALICE
    clock.now += dt.timedelta(minutes=2)
    assert _code(lambda: sessions.resume(started.secret)) == "portal.session_expired"


@pytest.mark.parametrize("token", ["", "fpk_not-a-token", "x" * 200])
def test_a_bad_token_starts_no_session(fleet: FleetPKI, token: str) -> None:
    before = row_counts(fleet)
    assert _code(lambda: fleet.portal_sessions.sign_in_with_token(token, source="t")) in {
        "auth.bad_token",
        "auth.missing",
    }
    assert row_counts(fleet) == before


def test_an_oidc_sign_in_makes_a_principal_who_is_not_an_admin(fleet: FleetPKI) -> None:
    started = fleet.portal_sessions.sign_in_with_oidc(
        "0a8a8c49-7542-5cd1-baa2-68dbb680e9d2", "carol", source="t"
    )
    assert started.session.principal.friendly_name == "carol"
    assert not started.session.principal.is_admin
    assert _code(
        lambda: fleet.portal_sessions.sign_in_with_oidc("not a guid", "x", source="t")
    ) == ("principal.bad_id")


def test_csrf_tokens_differ_per_browser_and_are_stable() -> None:
    assert csrf_token_for("a" * 43) == csrf_token_for("a" * 43)
    assert csrf_token_for("a" * 43) != csrf_token_for("b" * 43)


# -- pages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "page",
    [
        lambda f: f.portal_pages.hubs(ALICE_ACTOR),
        lambda f: f.portal_pages.devices(ALICE_ACTOR, offset=0, limit=10),
        lambda f: f.portal_pages.device(ALICE_ACTOR, "dev-1", telemetry_rows=5),
        lambda f: f.portal_pages.device_exists(ALICE_ACTOR, "dev-1"),
    ],
    ids=["hubs", "devices", "device", "device_exists"],
)
def test_hub_pages_are_for_admins(fleet: FleetPKI, page: object) -> None:
    assert callable(page)
    assert _code(lambda: page(fleet)) == "auth.admin_required"


def test_the_dashboard_shows_hubs_to_admins_only(fleet: FleetPKI) -> None:
    fleet.hub_links.add(ADMIN, link_command("local", "builtin"))
    assert fleet.portal_pages.dashboard(ALICE_ACTOR, limit=10).hubs is None
    hubs = fleet.portal_pages.dashboard(ADMIN, limit=10).hubs
    assert hubs is not None and [link.name for link in hubs.links] == ["local"]


def test_a_foreign_domain_and_certificate_are_not_found(fleet: FleetPKI) -> None:
    _, _, stored = issue_device_certificate(fleet, "dev-foreign")
    domain = fleet.domains.find(issuing_ca(fleet).id, "dev-foreign")
    assert domain is not None
    assert [d.domain.name for d in fleet.portal_pages.domains(ALICE_ACTOR).domains] == []
    assert (
        _code(lambda: fleet.portal_pages.domain(ALICE_ACTOR, domain.id, offset=0, limit=5))
        == "domain.not_found"
    )
    assert (
        _code(lambda: fleet.portal_pages.certificate(ALICE_ACTOR, stored.serial_hex))
        == "certificate.not_found"
    )
    page = fleet.portal_pages.certificate(ADMIN, stored.serial_hex)
    assert page.certificate.serial_hex == stored.serial_hex and page.effect.may_revoke


# -- daily activity -------------------------------------------------------------------------


def test_daily_activity_counts_what_the_caller_can_see(fleet: FleetPKI) -> None:
    _, _, stored = issue_device_certificate(fleet, "dev-a")
    fleet.certificates.revoke(ADMIN, stored.serial_hex, RevocationReason.KEY_COMPROMISE)
    days = fleet.certificates.daily_activity(ADMIN, days=7)
    assert len(days) == 7 and days[-1].day == fleet.now().astimezone(dt.UTC).date()
    assert days[-1].issued >= 1 and days[-1].revoked == 1
    mine = fleet.certificates.daily_activity(ALICE_ACTOR, days=7)
    assert sum(d.issued + d.revoked for d in mine) == 0


@pytest.mark.parametrize("days", [0, -1, 367])
def test_daily_activity_refuses_a_bad_window(fleet: FleetPKI, days: int) -> None:
    assert (
        _code(lambda: fleet.certificates.daily_activity(ADMIN, days=days))
        == "certificate.bad_window"
    )


# -- audit search ---------------------------------------------------------------------------


def test_audit_search_filters_and_is_for_admins(fleet: FleetPKI) -> None:
    _, _, stored = issue_device_certificate(fleet, "dev-b")
    fleet.certificates.revoke(ADMIN, stored.serial_hex, RevocationReason.SUPERSEDED)
    revokes = fleet.audit.search(ADMIN, AuditQuery(action="certificate.revoke"))
    assert [e.object_id for e in revokes] == [stored.serial_hex]
    prefixed = fleet.audit.search(ADMIN, AuditQuery(action="certificate"))
    assert {e.action.split(".")[0] for e in prefixed} == {"certificate"}
    assert len(prefixed) > len(revokes)
    now = fleet.now()
    assert fleet.audit.search(ADMIN, AuditQuery(since=now + dt.timedelta(hours=1))) == []
    assert _code(lambda: fleet.audit.search(ALICE_ACTOR, AuditQuery())) == "auth.admin_required"
    window = AuditQuery(since=now, until=now - dt.timedelta(seconds=1))
    assert _code(lambda: fleet.audit.search(ADMIN, window)) == "audit.bad_window"


# -- link options ---------------------------------------------------------------------------


def test_link_options_change_with_an_audit_entry_and_only_for_admins(fleet: FleetPKI) -> None:
    fleet.hub_links.add(ADMIN, link_command("local", "builtin"))
    before = row_counts(fleet)
    assert (
        _code(lambda: fleet.hub_links.set_options(ALICE_ACTOR, "local", disable_on_revoke=False))
        == "auth.admin_required"
    )
    assert _code(lambda: fleet.hub_links.set_options(ADMIN, "nope")) == "link.not_found"
    assert row_counts(fleet) == before
    # Unchanged options write nothing.
    same = fleet.hub_links.set_options(ADMIN, "local", disable_on_revoke=True)
    assert same.disable_on_revoke and row_counts(fleet) == before
    changed = fleet.hub_links.set_options(
        ADMIN, "local", disable_on_revoke=False, register_devices=True
    )
    assert (changed.disable_on_revoke, changed.register_devices) == (False, True)
    [entry] = fleet.audit.search(ADMIN, AuditQuery(action="hub.link.update"))
    assert entry.object_id == "local"
