"""POST /v1/certificates with an API token, answered by the layer before the framework
(api/issuance_fast_path.py): the same answer as the routes give, the route's refusals
for everything it hands on, and nothing written for a refusal."""

from __future__ import annotations

import json
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import ALICE, make_csr
from fleetpki.api.auth import require_bearer
from support.api import Api, api_fixture, row_counts  # noqa: F401 (a fixture)
from support.pkilint import assert_lints_clean


def _domain(api: Api, name: str) -> None:
    answer = api.client.post(
        "/v1/domains",
        json={"name": name, "owners": [{"id": ALICE}], "requesters": [{"id": ALICE}]},
        headers=api.auth(api.alice),
    )
    assert answer.status_code == 201, answer.text


def _route_never_runs() -> str:
    raise AssertionError("the route ran: the fast path did not answer")


def _metric(api: Api, prefix: str) -> float:
    text = api.client.get("/metrics").text
    values = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    ]
    return sum(values)


def test_api_token_issuance_is_answered_before_the_route(api: Api) -> None:
    device = str(uuid.uuid4())
    _domain(api, device)
    _, csr = make_csr(device)
    issued_before = _metric(api, 'fleetpki_certificates_issued_total{kind="v1"}')
    # The route's own dependency fails the request if the route is reached at all.
    api.client.app.dependency_overrides[require_bearer] = _route_never_runs
    try:
        answer = api.client.post(
            "/v1/certificates",
            json={"csr": csr.decode(), "domain": device, "validity_days": 7},
            headers=api.auth(api.alice),
        )
    finally:
        api.client.app.dependency_overrides.clear()
    assert answer.status_code == 201, answer.text
    assert answer.headers["content-type"] == "application/json"
    issued = answer.json()
    leaf = x509.load_pem_x509_certificates(issued["chain_pem"].encode())[0]
    assert_lints_clean("certificate", leaf.public_bytes(serialization.Encoding.DER))
    assert leaf.subject.rfc4514_string() == f"CN={device}"
    # The answer is the route family's: the certificate as GET presents it.
    serial = issued["certificate"]["serial"]
    stored = api.client.get(f"/v1/certificates/{serial}", headers=api.auth(api.alice))
    assert stored.json() == issued["certificate"]
    root = api.client.get(f"/v1/cas/{api.ca_id}/chain", headers=api.auth(api.alice))
    chain = x509.load_pem_x509_certificates(root.content)
    assert issued["root_pem"].encode() == chain[-1].public_bytes(serialization.Encoding.PEM)
    # Counted and timed like the route.
    assert _metric(api, 'fleetpki_certificates_issued_total{kind="v1"}') == issued_before + 1
    assert (
        _metric(
            api,
            'fleetpki_http_request_duration_seconds_count{method="POST",'
            'route="/v1/certificates",status="201"}',
        )
        >= 1
    )


def _post(api: Api, body: bytes, content_type: str = "application/json") -> dict[str, object]:
    answer = api.client.post(
        "/v1/certificates",
        content=body,
        headers={**api.auth(api.alice), "Content-Type": content_type},
    )
    assert 400 <= answer.status_code < 500, answer.text
    return {"status": answer.status_code, **answer.json()}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b'{"csr": ', "application/json", 400, "request.malformed_json"),
        (b'{"csr": "x", "surprise": 1}', "application/json", 422, "request.invalid"),
        (b'{"domain": "d"}', "application/json", 422, "request.invalid"),
        (
            b'{"csr": "x", "subject_alt_names": [{"type": "telepathy", "value": "v"}]}',
            "application/json",
            422,
            "request.invalid",
        ),
        (b'{"csr": "x", "ekus": ["no-such-eku"]}', "application/json", 400, "template.bad_eku"),
        (b"csr=x", "application/x-www-form-urlencoded", 422, "request.invalid"),
        (b'{"csr": "not a CSR"}', "application/json", 400, "csr.malformed"),
    ],
)
def test_what_the_fast_path_hands_on_gets_the_routes_refusal(
    api: Api, body: bytes, content_type: str, status: int, code: str
) -> None:
    before = row_counts(api.fleet)
    answer = _post(api, body, content_type)
    assert (answer["status"], answer["code"]) == (status, code)
    assert row_counts(api.fleet) == before


def test_refusals_of_the_issuance_keep_their_codes_and_write_nothing(api: Api) -> None:
    device = str(uuid.uuid4())
    _domain(api, device)
    _, csr = make_csr(device)
    body = json.dumps({"csr": csr.decode(), "domain": device}).encode()
    before = row_counts(api.fleet)
    # A stranger to the domain, a token that does not exist, an unknown domain.
    stranger = api.client.post(
        "/v1/certificates",
        content=body,
        headers={**api.auth(api.bob), "Content-Type": "application/json"},
    )
    # (A domain the caller may not see is not found, as on every route.)
    assert stranger.status_code == 404
    assert stranger.headers["content-type"].startswith("application/problem+json")
    assert stranger.json()["code"] == "domain.not_found"
    forged = api.client.post(
        "/v1/certificates",
        content=body,
        headers={"Authorization": "Bearer fpk_forged", "Content-Type": "application/json"},
    )
    assert (forged.status_code, forged.json()["code"]) == (401, "auth.bad_token")
    unknown = _post(api, json.dumps({"csr": csr.decode(), "domain": "nobody-here"}).encode())
    assert (unknown["status"], unknown["code"]) == (404, "domain.not_found")
    assert row_counts(api.fleet) == before


def test_the_fast_path_refusal_is_the_error_handler_s(api: Api) -> None:
    # Without a token the request goes to the route, whose dependency refuses it; with a
    # forged one the fast path refuses it with the same handler: same shape either way.
    missing = api.client.post("/v1/certificates", json={"csr": "x"})
    forged = api.client.post(
        "/v1/certificates", json={"csr": "x"}, headers={"Authorization": "Bearer fpk_nope"}
    )
    assert missing.status_code == forged.status_code == 401
    assert set(missing.json()) == set(forged.json())
    assert missing.headers["content-type"] == forged.headers["content-type"]
