"""Revoking an API token: it authenticates nothing afterwards, its principal's token
sign-ins to the portal end, strangers cannot revoke (or see) it, and it is audited."""

from __future__ import annotations

import pytest

from conftest import ALICE, BOB
from fleetpki.application import FleetPKI
from fleetpki.errors import FleetPKIError
from fleetpki.services.audit import AuditQuery
from fleetpki.services.context import Actor
from support.api import row_counts

ADMIN = Actor.local_admin()
ALICE_ACTOR = Actor(ALICE, source="test")
BOB_ACTOR = Actor(BOB, source="test")


def _code(call: object) -> str:
    assert callable(call)
    with pytest.raises(FleetPKIError) as caught:
        call()
    return caught.value.code


def test_a_revoked_token_authenticates_nothing_and_ends_its_portal_sessions(
    fleet: FleetPKI,
) -> None:
    token = fleet.principals.create_token(ADMIN, ALICE, name="laptop")
    other = fleet.principals.create_token(ADMIN, ALICE, name="ci")
    assert fleet.principals.authenticate_token(token.secret).id == ALICE
    session = fleet.portal_sessions.sign_in_with_token(token.secret, source="test")
    assert fleet.portal_sessions.resume(session.secret).principal.id == ALICE

    revoked = fleet.principals.revoke_token(ALICE_ACTOR, token.token_id)

    assert revoked.revoked_at is not None and revoked.token_id == token.token_id
    assert _code(lambda: fleet.principals.authenticate_token(token.secret)) == "auth.bad_token"
    assert _code(lambda: fleet.portal_sessions.resume(session.secret)) == "portal.signed_out"
    assert (
        _code(lambda: fleet.portal_sessions.sign_in_with_token(token.secret, source="test"))
        == "auth.bad_token"
    )
    # The principal's other token still works.
    assert fleet.principals.authenticate_token(other.secret).id == ALICE
    listed = {t.token_id: t for t in fleet.principals.tokens(ALICE_ACTOR)}
    assert listed[token.token_id].revoked_at == revoked.revoked_at
    assert listed[other.token_id].revoked_at is None
    assert {t.name for t in listed.values()} == {"laptop", "ci"}
    entries = fleet.audit.search(ADMIN, AuditQuery(action="token.revoke"))
    assert [(e.actor_id, e.details["token_id"]) for e in entries] == [(ALICE, token.token_id)]
    assert entries[0].details["portal_sessions_ended"] == 1
    # Again: nothing more happens, and nothing is audited twice.
    assert fleet.principals.revoke_token(ADMIN, token.token_id).revoked_at == revoked.revoked_at
    assert len(fleet.audit.search(ADMIN, AuditQuery(action="token.revoke"))) == 1


def test_strangers_cannot_revoke_or_list_a_token_and_nothing_changes(fleet: FleetPKI) -> None:
    token = fleet.principals.create_token(ADMIN, ALICE)
    counts = row_counts(fleet)
    assert _code(lambda: fleet.principals.revoke_token(BOB_ACTOR, token.token_id)) == (
        "token.not_found"
    )
    assert _code(lambda: fleet.principals.revoke_token(ADMIN, "not-a-guid")) == "token.not_found"
    assert _code(lambda: fleet.principals.tokens(BOB_ACTOR, ALICE)) == "token.not_allowed"
    assert [t.token_id for t in fleet.principals.tokens(BOB_ACTOR)] == []
    assert row_counts(fleet) == counts
    assert fleet.principals.authenticate_token(token.secret).id == ALICE
    # An admin sees every principal's.
    assert token.token_id in {t.token_id for t in fleet.principals.tokens(ADMIN)}
