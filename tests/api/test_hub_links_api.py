"""``/v1/hub-links``: add, list, show, remove and one-click trust, admins only, stable codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from fleetpki.api.hub_links import HubLinkOut, LinkTrustOut
from support.api import Api, api_fixture, row_counts  # noqa: F401 (a fixture)

SUBSCRIPTION = "5b6c8a8e-3f0e-4c5e-9a53-2c1f7b1f0d9e"
SECRET = "HostName=h.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0"


def _add(api: Api, body: dict[str, object], status: int = 201) -> dict[str, object]:
    answer = api.client.post("/v1/hub-links", json=body, headers=api.auth(api.admin))
    assert answer.status_code == status, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_add_list_get_trust_and_remove(api: Api) -> None:
    added = _add(api, {"name": "local", "kind": "builtin", "caIds": [api.ca_id]})
    HubLinkOut.model_validate(added)
    assert (added["kind"], added["consumer"], added["disableOnRevoke"]) == (
        "builtin",
        "link:local",
        True,
    )
    cloud = _add(
        api,
        {
            "name": "cloud",
            "kind": "azure",
            "subscriptionId": SUBSCRIPTION,
            "resourceGroup": "rg",
            "hubName": "my-hub",
            "credential": "connection-string",
            "secret": SECRET,
            "registerDevices": True,
        },
    )
    assert cloud["azure"] == {
        "subscriptionId": SUBSCRIPTION,
        "resourceGroup": "rg",
        "hubName": "my-hub",
        "managementUrl": "https://management.azure.com",
        "credential": "connection-string",
        "tenantId": None,
        "clientId": None,
        "authorityHost": None,
        "certificatePath": None,
        "serviceUrl": None,
        "caBundle": None,
    }
    assert cloud["hasSecret"] is True
    assert "c2VjcmV0" not in str(cloud)

    listed = api.client.get("/v1/hub-links", headers=api.auth(api.admin)).json()
    assert [link["name"] for link in listed] == ["cloud", "local"]
    shown = api.client.get("/v1/hub-links/local", headers=api.auth(api.admin)).json()
    assert shown == added

    trusted = api.client.post(
        "/v1/hub-links/local/trust", json={"caId": api.ca_id}, headers=api.auth(api.admin)
    )
    assert trusted.status_code == 200, trusted.text
    result = LinkTrustOut.model_validate(trusted.json())
    assert result.verified
    again = api.client.post(
        "/v1/hub-links/local/trust", json={"caId": api.ca_id}, headers=api.auth(api.admin)
    )
    assert again.json() == trusted.json()
    [entry] = api.client.get("/v1/hub-links/local", headers=api.auth(api.admin)).json()["cas"]
    assert (entry["certificateName"], entry["thumbprint"]) == (
        result.certificateName,
        result.thumbprint,
    )
    assert entry["verifiedAt"] is not None

    gone = api.client.delete("/v1/hub-links/cloud", headers=api.auth(api.admin))
    assert gone.status_code == 204
    missing = api.client.get("/v1/hub-links/cloud", headers=api.auth(api.admin))
    assert (missing.status_code, missing.json()["code"]) == (404, "link.not_found")


_BAD: dict[str, tuple[dict[str, object], int, str]] = {
    "unknown CA": (
        {"name": "x", "kind": "builtin", "caIds": ["00000000-0000-4000-8000-00000000dead"]},
        404,
        "ca.not_found",
    ),
    "name taken": ({"name": "taken", "kind": "builtin"}, 409, "link.exists"),
    "malformed subscription": (
        {
            "name": "x",
            "kind": "azure",
            "subscriptionId": "1234",
            "resourceGroup": "rg",
            "hubName": "hub",
        },
        400,
        "link.bad_subscription",
    ),
    "unknown kind": ({"name": "x", "kind": "aws"}, 400, "link.bad_kind"),
    "unknown credential": (
        {
            "name": "x",
            "kind": "azure",
            "subscriptionId": SUBSCRIPTION,
            "resourceGroup": "rg",
            "hubName": "hub",
            "credential": "password",
        },
        400,
        "link.bad_credential",
    ),
    "unknown field": ({"name": "x", "kind": "builtin", "colour": "red"}, 422, "request.invalid"),
}


@pytest.mark.parametrize("case", list(_BAD))
def test_bad_input_is_a_problem_and_changes_nothing(api: Api, case: str) -> None:
    _add(api, {"name": "taken", "kind": "builtin"})
    before = row_counts(api.fleet)
    body, status, code = _BAD[case]
    answer = api.client.post("/v1/hub-links", json=body, headers=api.auth(api.admin))
    assert (answer.status_code, answer.json()["code"]) == (status, code)
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert row_counts(api.fleet) == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/hub-links", None),
        ("POST", "/v1/hub-links", {"name": "x", "kind": "builtin"}),
        ("GET", "/v1/hub-links/taken", None),
        ("DELETE", "/v1/hub-links/taken", None),
        ("POST", "/v1/hub-links/taken/trust", {"caId": "x"}),
        ("GET", "/v1/hub-links/taken/status", None),
        ("POST", "/v1/hub-links/taken/retry", None),
    ],
)
def test_only_admins(api: Api, method: str, path: str, body: object) -> None:
    _add(api, {"name": "taken", "kind": "builtin"})
    before = row_counts(api.fleet)
    answer = api.client.request(method, path, json=body, headers=api.auth(api.alice))
    assert (answer.status_code, answer.json()["code"]) == (403, "auth.admin_required")
    anonymous = api.client.request(method, path, json=body)
    assert anonymous.status_code == 401
    assert row_counts(api.fleet) == before


def test_trusting_an_unknown_ca_or_in_an_unknown_link(api: Api) -> None:
    _add(api, {"name": "local", "kind": "builtin"})
    before = row_counts(api.fleet)
    for path, ca_id, code in [
        ("/v1/hub-links/local/trust", "00000000-0000-4000-8000-00000000dead", "ca.not_found"),
        ("/v1/hub-links/nope/trust", api.ca_id, "link.not_found"),
    ]:
        answer = api.client.post(path, json={"caId": ca_id}, headers=api.auth(api.admin))
        assert (answer.status_code, answer.json()["code"]) == (404, code)
    assert row_counts(api.fleet) == before


def test_status_and_retry(api: Api) -> None:
    _add(api, {"name": "local", "kind": "builtin", "caIds": [api.ca_id]})
    answer = api.client.get("/v1/hub-links/local/status", headers=api.auth(api.admin))
    assert answer.status_code == 200, answer.text
    status = answer.json()
    assert (status["link"], status["kind"], status["failed"], status["failedDeliveries"]) == (
        "local",
        "builtin",
        0,
        [],
    )
    retried = api.client.post("/v1/hub-links/local/retry", headers=api.auth(api.admin))
    assert retried.json() == {"link": "local", "requeued": 0}
    for method, path in [
        ("GET", "/v1/hub-links/nope/status"),
        ("POST", "/v1/hub-links/nope/retry"),
    ]:
        missing = api.client.request(method, path, headers=api.auth(api.admin))
        assert (missing.status_code, missing.json()["code"]) == (404, "link.not_found")
    bad = api.client.get("/v1/hub-links/local/status?limit=0", headers=api.auth(api.admin))
    assert bad.status_code == 422


def test_an_azure_link_to_another_fleetpki_names_its_service_url_and_ca_bundle(
    api: Api, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle.pem"
    certificate = api.fleet.cas.get(api.ca_id).certificate
    bundle.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    body: dict[str, object] = {
        "name": "other",
        "kind": "azure",
        "subscriptionId": SUBSCRIPTION,
        "resourceGroup": "rg",
        "hubName": "other-hub",
        "credential": "connection-string",
        "secret": SECRET,
        "serviceUrl": "https://other.example:8443/",
        "caBundle": str(bundle),
    }
    added = _add(api, body)
    assert (added["azure"]["serviceUrl"], added["azure"]["caBundle"]) == (  # type: ignore[index]
        "https://other.example:8443",
        str(bundle),
    )
    before = row_counts(api.fleet)
    for change, code in [
        ({"caBundle": str(tmp_path / "missing.pem")}, "link.ca_bundle_missing"),
        ({"serviceUrl": "ftp://other.example"}, "link.bad_url"),
    ]:
        answer = api.client.post(
            "/v1/hub-links", json={**body, "name": "x", **change}, headers=api.auth(api.admin)
        )
        assert (answer.status_code, answer.json()["code"]) == (400, code)
    assert row_counts(api.fleet) == before


def test_trust_where_another_ca_holds_the_name_is_409_and_changes_nothing(api: Api) -> None:
    from fleetpki.services.hub_links import certificate_name_for

    fleet = api.fleet
    issuing = fleet.cas.get(api.ca_id)
    root = fleet.cas.get(issuing.parent_id or "")
    name = certificate_name_for(issuing.name, issuing.id)
    fleet.hub_trust.upload(name, root.certificate.public_bytes(serialization.Encoding.PEM))
    _add(api, {"name": "local", "kind": "builtin"})
    held = fleet.hub_trust.get(name)
    answer = api.client.post(
        "/v1/hub-links/local/trust", json={"caId": api.ca_id}, headers=api.auth(api.admin)
    )
    assert (answer.status_code, answer.json()["code"]) == (409, "link.certificate_name_taken")
    after = fleet.hub_trust.get(name)
    assert (after.sha1_hex, after.etag) == (held.sha1_hex, held.etag)
    [entry] = api.client.get("/v1/hub-links/local", headers=api.auth(api.admin)).json()["cas"]
    assert "link.certificate_name_taken" in entry["lastError"]


def test_ca_renewal_over_the_api(api: Api) -> None:
    answer = api.client.post(
        f"/v1/cas/{api.ca_id}/renew", json={"rekey": False}, headers=api.auth(api.admin)
    )
    assert answer.status_code == 201, answer.text
    assert (answer.json()["number"], answer.json()["state"]) == (2, "active")
    listed = api.client.get(f"/v1/cas/{api.ca_id}/generations", headers=api.auth(api.alice))
    assert [g["state"] for g in listed.json()] == ["retiring", "active"]
    crl = api.client.get(f"/crl/{api.ca_id}/2.crl")
    assert (crl.status_code, crl.headers["content-type"]) == (200, "application/pkix-crl")
    assert api.client.get(f"/ca/{api.ca_id}/2.cer").status_code == 200
    assert api.client.get(f"/crl/{api.ca_id}/9.crl").status_code == 404
    before = row_counts(api.fleet)
    for path, body, headers, status, code in [
        (f"/v1/cas/{api.ca_id}/renew", {}, api.auth(api.alice), 403, "auth.admin_required"),
        (f"/v1/cas/{api.ca_id}/renew", {"rekey": "yes"}, api.auth(api.admin), 422, None),
        (f"/v1/cas/{api.ca_id}/renew", {"days": 0}, api.auth(api.admin), 422, None),
        (f"/v1/cas/{api.ca_id}/activate", {}, api.auth(api.admin), 404, "ca.nothing_pending"),
    ]:
        refused = api.client.post(path, json=body, headers=headers)
        assert refused.status_code == status, refused.text
        if code is not None:
            assert refused.json()["code"] == code
    assert row_counts(api.fleet) == before
