"""GET /v1/tokens and POST /v1/tokens/{id}/revoke: a principal revokes its own token,
which then gets 401; a stranger gets 404 and changes nothing."""

from __future__ import annotations

from support.api import ALICE, Api, api_fixture, row_counts  # noqa: F401 (a fixture)


def _id_of(api: Api, secret: str, principal: str) -> str:
    listed = api.client.get(
        "/v1/tokens", params={"principal_id": principal}, headers=api.auth(api.admin)
    )
    assert listed.status_code == 200, listed.text
    (found,) = [t for t in listed.json() if secret.startswith(t["prefix"])]
    assert "secret" not in found and "token_hash" not in found
    return str(found["id"])


def test_a_principal_revokes_its_own_token_which_then_gets_401(api: Api) -> None:
    token_id = _id_of(api, api.alice, ALICE)
    assert api.client.get("/v1/domains", headers=api.auth(api.alice)).status_code == 200

    answer = api.client.post(f"/v1/tokens/{token_id}/revoke", headers=api.auth(api.alice))

    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == token_id and answer.json()["revoked_at"] is not None
    refused = api.client.get("/v1/domains", headers=api.auth(api.alice))
    assert refused.status_code == 401 and refused.json()["code"] == "auth.bad_token"


def test_a_stranger_gets_404_and_changes_nothing(api: Api) -> None:
    token_id = _id_of(api, api.alice, ALICE)
    before = row_counts(api.fleet)
    for path in (f"/v1/tokens/{token_id}/revoke", "/v1/tokens/not-a-guid/revoke"):
        answer = api.client.post(path, headers=api.auth(api.bob))
        assert answer.status_code == 404 and answer.json()["code"] == "token.not_found"
    others = api.client.get("/v1/tokens", params={"principal_id": ALICE}, headers=api.auth(api.bob))
    assert others.status_code == 403 and others.json()["code"] == "token.not_allowed"
    own = api.client.get("/v1/tokens", headers=api.auth(api.bob))
    assert own.status_code == 200 and all(t["principal_id"] != ALICE for t in own.json())
    assert row_counts(api.fleet) == before
    assert api.client.get("/v1/domains", headers=api.auth(api.alice)).status_code == 200
