"""The native /v1 API: resources, visibility, revocation, renewal, problem+json errors."""

from __future__ import annotations

import uuid

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import ALICE, BOB, make_csr
from fleetpki.pki.certtoken import make_certificate_token
from support.api import Api, api_fixture  # noqa: F401 (a fixture)
from support.pkilint import assert_lints_clean


def _domain(api: Api, name: str) -> dict[str, object]:
    answer = api.client.post(
        "/v1/domains",
        json={"name": name, "owners": [{"id": ALICE}], "requesters": [{"id": ALICE}]},
        headers=api.auth(api.alice),
    )
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_cas_templates_and_chain(api: Api) -> None:
    cas = api.client.get("/v1/cas", headers=api.auth(api.alice)).json()
    assert [c["tier"] for c in cas] == ["root", "issuing"]
    chain = api.client.get(f"/v1/cas/{api.ca_id}/chain", headers=api.auth(api.alice))
    assert chain.headers["content-type"].startswith("application/pem-certificate-chain")
    assert len(x509.load_pem_x509_certificates(chain.content)) == 2
    templates = api.client.get(f"/v1/templates?ca_id={api.ca_id}", headers=api.auth(api.alice))
    assert [t["id"] for t in templates.json()] == [api.template_id]


def test_issue_list_get_revoke_and_visibility(api: Api) -> None:
    device = str(uuid.uuid4())
    domain = _domain(api, device)
    assert domain["owners"] == [ALICE]
    _, csr = make_csr(device)
    answer = api.client.post(
        "/v1/certificates",
        json={"csr": csr.decode(), "domain": device, "validity_days": 7},
        headers=api.auth(api.alice),
    )
    assert answer.status_code == 201, answer.text
    issued = answer.json()
    serial = issued["certificate"]["serial"]
    leaf = x509.load_pem_x509_certificates(issued["chain_pem"].encode())[0]
    assert_lints_clean("certificate", leaf.public_bytes(serialization.Encoding.DER))
    listed = api.client.get(
        f"/v1/certificates?domain={device}&status=valid", headers=api.auth(api.alice)
    )
    assert [c["serial"] for c in listed.json()] == [serial]
    assert (
        api.client.get(f"/v1/certificates?domain={device}", headers=api.auth(api.bob)).json() == []
    )
    hidden = api.client.get(f"/v1/certificates/{serial}", headers=api.auth(api.bob))
    assert hidden.status_code == 404 and hidden.json()["code"] == "certificate.not_found"
    assert (
        api.client.get(f"/v1/domains/{domain['id']}", headers=api.auth(api.bob)).status_code == 404
    )
    revoked = api.client.post(
        f"/v1/certificates/{serial}/revoke", json={"reason": 1}, headers=api.auth(api.alice)
    )
    assert revoked.status_code == 200 and revoked.json()["revocation_reason"] == "keyCompromise"
    again = api.client.post(
        f"/v1/certificates/{serial}/revoke", json={}, headers=api.auth(api.alice)
    )
    assert again.status_code == 409 and again.json()["code"] == "certificate.already_revoked"
    audit = api.client.get(f"/v1/certificates/{serial}/audit", headers=api.auth(api.alice)).json()
    assert [e["action"] for e in audit] == ["certificate.revoke", "certificate.issue"]


def test_renew_keeps_the_domain_and_may_change_the_key(api: Api) -> None:
    device = str(uuid.uuid4())
    _domain(api, device)
    key, csr = make_csr(device)
    first = api.client.post(
        "/v1/certificates",
        json={"csr": csr.decode(), "domain": device},
        headers=api.auth(api.alice),
    ).json()
    cert = x509.load_pem_x509_certificates(first["chain_pem"].encode())[0]
    token = make_certificate_token(
        cert, key, audience=api.fleet.settings.certificate_token_audience, now=api.fleet.now()
    )
    new_key, new_csr = make_csr(device)
    answer = api.client.post(
        "/v1/certificates/renew",
        json={"certificate": first["chain_pem"], "csr": new_csr.decode()},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 201, answer.text
    renewed = x509.load_pem_x509_certificates(answer.json()["chain_pem"].encode())[0]
    assert renewed.subject == cert.subject
    assert renewed.public_key() == new_key.public_key() != cert.public_key()
    assert answer.json()["certificate"]["domain_id"] == first["certificate"]["domain_id"]


def test_members_can_be_replaced_by_owners_only(api: Api) -> None:
    domain = _domain(api, str(uuid.uuid4()))
    by_bob = api.client.put(
        f"/v1/domains/{domain['id']}/members", json={"owners": [BOB]}, headers=api.auth(api.bob)
    )
    assert by_bob.status_code == 403 and by_bob.json()["code"] == "domain.not_owner"
    by_alice = api.client.put(
        f"/v1/domains/{domain['id']}/members",
        json={"owners": [ALICE], "requesters": [BOB]},
        headers=api.auth(api.alice),
    )
    assert by_alice.status_code == 200 and by_alice.json()["requesters"] == [BOB]


def test_unknown_route_and_method_are_problems(api: Api) -> None:
    missing = api.client.get("/v1/nothing-here", headers=api.auth(api.alice))
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "request.not_found"
    wrong = api.client.delete("/v1/cas", headers=api.auth(api.alice))
    assert wrong.status_code == 405 and wrong.json()["code"] == "request.method_not_allowed"
