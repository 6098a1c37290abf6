"""Bad input gets a 4xx with a stable code and changes nothing in the database."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509

from conftest import ALICE, make_csr
from fleetpki.keystore import PrivateKey
from fleetpki.pki.certtoken import make_certificate_token
from support.api import Api, api_fixture, row_counts  # noqa: F401 (a fixture)


@dataclass
class Call:
    """One HTTP call: method, path, headers and a JSON body or raw content."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    json_body: Any = None
    content: bytes | None = None


def _register(api: Api, device: str) -> None:
    body = {
        "CAID": api.ca_id,
        "TemplateID": api.template_id,
        "Domain": device,
        "Owners": [{"ObjectId": ALICE, "FriendlyName": "alice"}],
        "Requesters": [{"ObjectId": ALICE, "FriendlyName": "alice"}],
    }
    answer = api.client.post("/api/CA/RegisterNewDomain", json=body, headers=api.auth(api.alice))
    assert answer.status_code == 200, answer.text


def _request(api: Api, device: str, csr: str, **extra: Any) -> dict[str, Any]:
    return {
        "SubjectName": f"CN={device}",
        "SubjectAltNames": [device],
        "CAID": api.ca_id,
        "TemplateID": api.template_id,
        "CSR": csr,
        "ValidityInDays": 1,
        **extra,
    }


def _issued(api: Api, days: int = 1) -> tuple[PrivateKey, str, str]:
    device = str(uuid.uuid4())
    _register(api, device)
    key, csr = make_csr(device)
    answer = api.client.post(
        "/api/CA/RequestSSLCertificate",
        json=_request(api, device, csr.decode(), ValidityInDays=days),
        headers=api.auth(api.alice),
    )
    assert answer.status_code == 200, answer.text
    return key, answer.json()["Message"], device


def _token(api: Api, key: PrivateKey, pem: str, now: dt.datetime | None = None) -> str:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return make_certificate_token(
        cert,
        key,
        audience=api.fleet.settings.certificate_token_audience,
        now=now or api.fleet.now(),
    )


def _renew_call(api: Api, token: str, pem: str, device: str) -> Call:
    _, csr = make_csr(device)
    return Call(
        "POST",
        "/api/Certificates/RenewCertificateV2",
        {"Authorization": f"Bearer {token}"},
        {"Certificate": pem, "Payload": {"CSR": csr.decode(), "ValidityInDays": 1}},
    )


# Each case prepares what it needs (outside the measured window) and returns the call.


def malformed_json(api: Api) -> Call:
    headers = {**api.auth(api.alice), "Content-Type": "application/json"}
    return Call("POST", "/api/CA/RequestSSLCertificate", headers, content=b'{"CAID": ')


def malformed_json_v1(api: Api) -> Call:
    headers = {**api.auth(api.alice), "Content-Type": "application/json"}
    return Call("POST", "/v1/certificates", headers, content=b"[not json")


def unknown_caid(api: Api) -> Call:
    device = str(uuid.uuid4())
    _register(api, device)
    _, csr = make_csr(device)
    body = _request(api, device, csr.decode(), CAID=str(uuid.uuid4()))
    return Call("POST", "/api/CA/RequestSSLCertificate", api.auth(api.alice), body)


def caid_not_a_guid(api: Api) -> Call:
    _, csr = make_csr("d1")
    body = _request(api, "d1", csr.decode(), CAID="not-a-guid")
    return Call("POST", "/api/CA/RequestSSLCertificate", api.auth(api.alice), body)


def unknown_template(api: Api) -> Call:
    device = str(uuid.uuid4())
    _register(api, device)
    _, csr = make_csr(device)
    body = _request(
        api,
        device,
        csr.decode(),
        TemplateID=str(uuid.uuid4()),
        SubjectAltNames=[{"ValueSTR": device, "SubjectAltType": 2}],
    )
    return Call("POST", "/api/CA/RequestSSLCertificateV2", api.auth(api.alice), body)


def garbage_csr(api: Api) -> Call:
    device = str(uuid.uuid4())
    _register(api, device)
    body = _request(
        api,
        device,
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    )
    return Call("POST", "/api/CA/RequestSSLCertificate", api.auth(api.alice), body)


def non_pem_csr(api: Api) -> Call:
    device = str(uuid.uuid4())
    _register(api, device)
    body = {"csr": "hello, I am not a CSR", "domain": device}
    return Call("POST", "/v1/certificates", api.auth(api.alice), body)


def one_megabyte_body(api: Api) -> Call:
    _, csr = make_csr("d1")
    body = _request(api, "d1", csr.decode(), SelectedLocation="x" * (1 << 20))
    return Call("POST", "/api/CA/RequestSSLCertificate", api.auth(api.alice), body)


def existing_domain(api: Api) -> Call:
    device = str(uuid.uuid4())
    _register(api, device)
    body = {
        "CAID": api.ca_id,
        "TemplateID": api.template_id,
        "Domain": device,
        "Owners": [{"ObjectId": ALICE}],
        "Requesters": [{"ObjectId": str(uuid.uuid4()), "FriendlyName": "would be new"}],
    }
    return Call("POST", "/api/CA/RegisterNewDomain", api.auth(api.alice), body)


def bad_owner_id(api: Api) -> Call:
    body = {"CAID": api.ca_id, "Domain": "dev-x", "Owners": [{"ObjectId": "alice@example"}]}
    return Call("POST", "/api/CA/RegisterNewDomain", api.auth(api.alice), body)


def not_a_requester(api: Api) -> Call:
    device = str(uuid.uuid4())
    _register(api, device)
    _, csr = make_csr(device)
    return Call(
        "POST",
        "/api/CA/RequestSSLCertificate",
        api.auth(api.bob),
        _request(api, device, csr.decode()),
    )


def bad_eku(api: Api) -> Call:
    device = str(uuid.uuid4())
    _register(api, device)
    _, csr = make_csr(device)
    body = _request(api, device, csr.decode(), EKUs=["server authentication please"])
    return Call("POST", "/api/CA/RequestSSLCertificate", api.auth(api.alice), body)


def missing_field(api: Api) -> Call:
    return Call("POST", "/api/CA/RequestSSLCertificate", api.auth(api.alice), {"CAID": api.ca_id})


def no_credentials(api: Api) -> Call:
    return Call("GET", "/api/CA/GetMyDomains")


def bad_token(api: Api) -> Call:
    return Call("GET", "/v1/domains", {"Authorization": "Bearer fpk_not-a-real-token"})


def _v1_issue(api: Api, token: str) -> Call:
    # A valid request for a registered domain of alice's: only the caller is wrong.
    device = str(uuid.uuid4())
    _register(api, device)
    _, csr = make_csr(device)
    return Call(
        "POST", "/v1/certificates", api.auth(token), {"ca_id": api.ca_id, "csr": csr.decode()}
    )


def v1_issue_with_a_bad_token(api: Api) -> Call:
    return _v1_issue(api, "fpk_not-a-real-token")


def v1_issue_by_a_stranger(api: Api) -> Call:
    return _v1_issue(api, api.bob)


def bob_revokes_alices_certificate(api: Api) -> Call:
    _, pem, _ = _issued(api)
    cert = x509.load_pem_x509_certificate(pem.encode())
    return Call("POST", f"/v1/certificates/{cert.serial_number:X}/revoke", api.auth(api.bob), {})


def token_for_someone_elses_certificate(api: Api) -> Call:
    key, pem, device = _issued(api)
    _, other_pem, _ = _issued(api)
    return _renew_call(api, _token(api, key, pem), other_pem, device)


def replayed_jti(api: Api) -> Call:
    key, pem, device = _issued(api)
    token = _token(api, key, pem)
    first = _renew_call(api, token, pem, device)
    answer = api.client.post(first.path, json=first.json_body, headers=first.headers)
    assert answer.status_code == 200, answer.text
    return _renew_call(api, token, pem, device)


def expired_certificate(api: Api) -> Call:
    key, pem, device = _issued(api, days=1)
    later = api.fleet.now() + dt.timedelta(days=3)
    api.fleet.clock = lambda: later
    return _renew_call(api, _token(api, key, pem, now=later), pem, device)


def revoked_certificate(api: Api) -> Call:
    key, pem, device = _issued(api)
    cert = x509.load_pem_x509_certificate(pem.encode())
    answer = api.client.post(
        f"/v1/certificates/{cert.serial_number:X}/revoke",
        json={"reason": "keyCompromise"},
        headers=api.auth(api.alice),
    )
    assert answer.status_code == 200, answer.text
    return _renew_call(api, _token(api, key, pem), pem, device)


def wrong_audience(api: Api) -> Call:
    key, pem, device = _issued(api)
    cert = x509.load_pem_x509_certificate(pem.encode())
    token = make_certificate_token(cert, key, audience="https://ezca.io", now=api.fleet.now())
    return _renew_call(api, token, pem, device)


def renewal_for_another_name(api: Api) -> Call:
    key, pem, _ = _issued(api)
    other = str(uuid.uuid4())
    _register(api, other)
    return _renew_call(api, _token(api, key, pem), pem, other)


CASES: list[tuple[Callable[[Api], Call], int, str]] = [
    (malformed_json, 400, "request.malformed_json"),
    (malformed_json_v1, 400, "request.malformed_json"),
    (unknown_caid, 404, "ca.not_found"),
    (caid_not_a_guid, 404, "ca.not_found"),
    (unknown_template, 404, "template.not_found"),
    (garbage_csr, 400, "csr.malformed"),
    (non_pem_csr, 400, "csr.malformed"),
    (one_megabyte_body, 413, "request.too_large"),
    (existing_domain, 409, "domain.exists"),
    (bad_owner_id, 400, "principal.bad_id"),
    (not_a_requester, 403, "domain.not_requester"),
    (bad_eku, 400, "template.bad_eku"),
    (missing_field, 422, "request.invalid"),
    (no_credentials, 401, "auth.missing"),
    (bad_token, 401, "auth.bad_token"),
    (v1_issue_with_a_bad_token, 401, "auth.bad_token"),
    (v1_issue_by_a_stranger, 403, "domain.not_requester"),
    (bob_revokes_alices_certificate, 404, "certificate.not_found"),
    (token_for_someone_elses_certificate, 401, "certtoken.x5t_mismatch"),
    (replayed_jti, 401, "certtoken.replayed"),
    (expired_certificate, 401, "certificate.expired"),
    (revoked_certificate, 401, "certificate.revoked"),
    (wrong_audience, 401, "certtoken.invalid"),
    (renewal_for_another_name, 403, "domain.not_requester"),
]


@pytest.mark.parametrize(("prepare", "status", "code"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(
    api: Api, prepare: Callable[[Api], Call], status: int, code: str
) -> None:
    call = prepare(api)
    before = row_counts(api.fleet)
    answer = api.client.request(
        call.method,
        call.path,
        headers={"Content-Type": "application/json", **call.headers},
        content=call.content
        if call.content is not None
        else (json.dumps(call.json_body).encode() if call.json_body is not None else None),
    )
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["code"] == code
    assert problem["status"] == status
    assert {"type", "title", "detail"} <= set(problem)
    if call.path.startswith("/api/"):
        assert problem["Success"] is False and code in problem["Message"]
    assert row_counts(api.fleet) == before
