"""The provisioning service over HTTPS on a real server: DPS's runtime registration API and
its enrollment service API; bad input is a 4xx with a stable code and changes nothing."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from fleetpki.services import Actor
from fleetpki.services.provisioning_enrollments import EnrollmentKind, EnrollmentSpec
from support.api import row_counts
from support.hub import DeviceFiles, issue_device
from support.hub_control import issuing_ca
from support.server import LiveServer, start_server

API = "api-version=2021-06-01"
TWIN = {"tags": {"site": "plant-1"}, "properties": {"desired": {"interval": 30}}}


@dataclass
class Provisioning:
    """A server with an enrollment group for its issuing CA, and two devices' files."""

    server: LiveServer
    scope: str
    first: DeviceFiles
    second: DeviceFiles
    ca_name: str

    def device(self, files: DeviceFiles | None) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.server.ca_bundle))
        if files is not None:
            context.load_cert_chain(str(files.cert), str(files.key))
        return httpx.Client(base_url=self.server.base_url, verify=context, timeout=30)

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.base_url,
            verify=ssl.create_default_context(cafile=str(self.server.ca_bundle)),
            headers={"Authorization": f"Bearer {self.server.admin_token}"},
            timeout=30,
        )


@pytest.fixture(name="dps")
def dps_fixture(tmp_path: Path, key_passphrase: None) -> Iterator[Provisioning]:
    with start_server(tmp_path / "home", provisioning_register_interval_seconds=0) as server:
        fleet = server.fleet
        ca = issuing_ca(fleet)
        trusted = fleet.hub_trust.trust_local_ca(ca.id)
        fleet.provisioning_enrollments.add(
            Actor.local_admin(),
            EnrollmentSpec(EnrollmentKind.GROUP, "plant", ca=ca.id, initial_twin=TWIN),
        )
        yield Provisioning(
            server,
            fleet.provisioning.id_scope,
            issue_device(fleet, "https-dev", tmp_path),
            issue_device(fleet, "https-other", tmp_path),
            trusted.name,
        )


def _register(client: httpx.Client, scope: str, registration_id: str, **kw: Any) -> httpx.Response:
    body = kw.pop("json", {"registrationId": registration_id, "payload": None})
    return client.put(f"/{scope}/registrations/{registration_id}/register?{API}", json=body, **kw)


def test_a_device_registers_over_https_and_polls_its_operation(dps: Provisioning) -> None:
    fleet = dps.server.fleet
    with dps.device(dps.first) as device:
        answer = _register(device, dps.scope, "https-dev")
        assert answer.status_code == 202, answer.text
        operation = answer.json()
        assert operation["status"] == "assigning"
        assert answer.headers["Retry-After"] == "1"
        polled = device.get(
            f"/{dps.scope}/registrations/https-dev/operations/{operation['operationId']}?{API}"
        )
    assert polled.status_code == 200, polled.text
    body = polled.json()
    assert body["status"] == "assigned"
    state = body["registrationState"]
    assert (state["assignedHub"], state["deviceId"], state["substatus"]) == (
        fleet.settings.hostname,
        "https-dev",
        "initialAssignment",
    )
    assert state["x509"] == {"enrollmentGroupId": "plant"}
    assert fleet.hub_devices.get("https-dev").auth_type == "certificateAuthority"
    assert fleet.hub_twins.get("https-dev").desired == {"interval": 30}

    # The DPS service API shows where it went (admins only).
    with dps.admin() as admin:
        shown = admin.get(f"/registrations/https-dev?{API}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["assignedHub"] == fleet.settings.hostname


def _poll_other(dps: Provisioning) -> httpx.Response:
    """The second device asks for the operation of the first."""
    with dps.device(dps.first) as first:
        operation_id = _register(first, dps.scope, "https-dev").json()["operationId"]
    with dps.device(dps.second) as second:
        return second.get(f"/{dps.scope}/registrations/https-other/operations/{operation_id}?{API}")


Call = Callable[[httpx.Client, str], httpx.Response]

# (name, whose certificate, the call with the client and the ID scope, status, stable code)
BAD_REGISTRATIONS: list[tuple[str, bool, Call, int, str]] = [
    ("registration id is not the CN", True,
     lambda c, scope: _register(c, scope, "https-other"), 401, "hub.cn_mismatch"),
    ("body registrationId differs", True,
     lambda c, scope: _register(c, scope, "https-dev", json={"registrationId": "https-other"}),
     400, "provisioning.registration_id_mismatch"),
    ("unknown ID scope", True,
     lambda c, scope: _register(c, "0ne00000000", "https-dev"),
     404, "provisioning.unknown_id_scope"),
    ("malformed payload", True,
     lambda c, scope: c.put(f"/{scope}/registrations/https-dev/register?{API}", content=b"{no"),
     400, "provisioning.bad_payload"),
    ("payload not an object", True,
     lambda c, scope: _register(c, scope, "https-dev", json=["x"]),
     400, "provisioning.bad_payload"),
    ("bad registration id", True,
     lambda c, scope: _register(c, scope, "bad!id"), 400, "provisioning.bad_registration_id"),
    ("no api-version", True,
     lambda c, scope: c.put(f"/{scope}/registrations/https-dev/register", json={}),
     400, "provisioning.bad_api_version"),
    ("no client certificate", False,
     lambda c, scope: _register(c, scope, "https-dev"),
     401, "provisioning.no_client_certificate"),
    ("unknown operation", True,
     lambda c, scope: c.get(f"/{scope}/registrations/https-dev/operations/4.none.here?{API}"),
     404, "provisioning.operation_not_found"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("with_certificate", "call", "status", "code"),
    [pytest.param(w, c, s, k, id=n) for n, w, c, s, k in BAD_REGISTRATIONS],
)
def test_bad_registrations_are_refused_and_change_nothing(
    dps: Provisioning, with_certificate: bool, call: Call, status: int, code: str
) -> None:
    before = row_counts(dps.server.fleet)
    with dps.device(dps.first if with_certificate else None) as client:
        answer = call(client, dps.scope)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["code"] == code
    assert body["errorCode"] // 1000 == status
    assert {"trackingId", "message", "timestampUtc"} <= set(body)
    assert row_counts(dps.server.fleet) == before


def test_polling_another_devices_operation_is_not_found(dps: Provisioning) -> None:
    answer = _poll_other(dps)
    assert answer.status_code == 404, answer.text
    assert answer.json()["code"] == "provisioning.operation_not_found"
    assert dps.server.fleet.hub_devices.get("https-dev") is not None
    assert [d.device_id for d in dps.server.fleet.hub_devices.list()] == ["https-dev"]


def test_too_many_registrations_are_429_with_retry_after_and_change_nothing(
    dps: Provisioning,
) -> None:
    dps.server.fleet.provisioning.throttle.interval = 60
    with dps.device(dps.first) as device:
        assert _register(device, dps.scope, "https-dev").status_code == 202
        before = row_counts(dps.server.fleet)
        answer = _register(device, dps.scope, "https-dev")
    assert answer.status_code == 429, answer.text
    assert 1 <= int(answer.headers["Retry-After"]) <= 60
    assert answer.json()["code"] == "provisioning.throttled"
    assert row_counts(dps.server.fleet) == before


# --------------------------------------------------------------------------- service API


def test_enrollment_groups_through_the_service_api(dps: Provisioning) -> None:
    fleet = dps.server.fleet
    fleet.provisioning_enrollments.delete(Actor.local_admin(), EnrollmentKind.GROUP, "plant")
    group = {
        "enrollmentGroupId": "line-2",
        "attestation": {"type": "x509", "x509": {"caReferences": {"primary": dps.ca_name}}},
        "initialTwin": TWIN,
        "reprovisionPolicy": {"updateHubAssignment": True, "migrateDeviceData": False},
        "provisioningStatus": "enabled",
    }
    with dps.admin() as admin:
        put = admin.put(f"/enrollmentGroups/line-2?{API}", json=group)
        assert put.status_code == 200, put.text
        created = put.json()
        assert created["attestation"]["x509"]["caReferences"]["primary"] == dps.ca_name
        assert created["allocationPolicy"] == "static"
        assert created["iotHubs"] == [fleet.settings.hostname]
        assert created["reprovisionPolicy"] == {
            "updateHubAssignment": True,
            "migrateDeviceData": False,
        }
        assert admin.get(f"/enrollmentGroups/line-2?{API}").json()["etag"] == created["etag"]
        listed = admin.post(f"/enrollmentGroups/query?{API}", json={"query": "*"})
        assert [g["enrollmentGroupId"] for g in listed.json()] == ["line-2"]

        # Disabled through a PUT with its etag: a device then ends "disabled".
        disabled = admin.put(
            f"/enrollmentGroups/line-2?{API}",
            json={**group, "provisioningStatus": "disabled"},
            headers={"If-Match": created["etag"]},
        )
        assert disabled.status_code == 200, disabled.text
        stale = admin.put(
            f"/enrollmentGroups/line-2?{API}", json=group, headers={"If-Match": created["etag"]}
        )
        assert stale.status_code == 412, stale.text
        with dps.device(dps.first) as device:
            operation = _register(device, dps.scope, "https-dev").json()
            polled = device.get(
                f"/{dps.scope}/registrations/https-dev/operations/{operation['operationId']}?{API}"
            ).json()
        assert polled["status"] == "disabled"
        assert fleet.hub_devices.list() == []

        assert admin.delete(f"/enrollmentGroups/line-2?{API}").status_code == 204
        gone = admin.get(f"/enrollmentGroups/line-2?{API}")
        assert gone.status_code == 404
        assert gone.json()["code"] == "provisioning.enrollment_not_found"


def test_an_individual_enrollment_through_the_service_api(dps: Provisioning) -> None:
    der = dps.first.certificate.public_bytes(serialization.Encoding.DER)
    body = {
        "registrationId": "https-dev",
        "attestation": {
            "type": "x509",
            "x509": {
                "clientCertificates": {"primary": {"certificate": base64.b64encode(der).decode()}}
            },
        },
    }
    with dps.admin() as admin:
        put = admin.put(f"/enrollments/https-dev?{API}", json=body)
        assert put.status_code == 200, put.text
        info = put.json()["attestation"]["x509"]["clientCertificates"]["primary"]["info"]
        assert info["sha1Thumbprint"]
        listed = admin.post(f"/enrollments/query?{API}", json={"query": "*"}).json()
        assert [e["registrationId"] for e in listed] == ["https-dev"]
    with dps.device(dps.first) as device:
        operation = _register(device, dps.scope, "https-dev").json()
        polled = device.get(
            f"/{dps.scope}/registrations/https-dev/operations/{operation['operationId']}?{API}"
        ).json()
    assert polled["status"] == "assigned"
    # An individual enrollment wins over the group: no enrollmentGroupId.
    assert polled["registrationState"]["x509"] == {}


def _group(ca: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "attestation": {"type": "x509", "x509": {"caReferences": {"primary": ca}}},
    }
    return {**body, **changes}


# (name, method, path, body builder from the CA name, status, code)
BAD_SERVICE_CALLS = [
    ("group id differs", "PUT", "/enrollmentGroups/g1",
     lambda ca: _group(ca, enrollmentGroupId="g2"), 400, "provisioning.bad_enrollment"),
    ("tpm attestation", "PUT", "/enrollmentGroups/g1",
     lambda ca: {"attestation": {"type": "tpm"}}, 400, "provisioning.bad_enrollment"),
    ("signing certificates", "PUT", "/enrollmentGroups/g1",
     lambda ca: {"attestation": {"type": "x509", "x509": {"signingCertificates": {}}}},
     400, "provisioning.bad_enrollment"),
    ("unknown hub CA", "PUT", "/enrollmentGroups/g1",
     lambda ca: _group("no-such-ca"), 404, "hub.ca_not_found"),
    ("custom allocation", "PUT", "/enrollmentGroups/g1",
     lambda ca: _group(ca, allocationPolicy="custom"), 400, "provisioning.bad_allocation"),
    ("unknown hub", "PUT", "/enrollmentGroups/g1",
     lambda ca: _group(ca, iotHubHostName="elsewhere.example"), 400, "provisioning.unknown_hub"),
    ("twin with reported", "PUT", "/enrollmentGroups/g1",
     lambda ca: _group(ca, initialTwin={"properties": {"reported": {"a": 1}}}),
     400, "provisioning.bad_twin"),
    ("iotHubs not a list", "PUT", "/enrollmentGroups/g1",
     lambda ca: _group(ca, iotHubs="x"), 400, "provisioning.bad_enrollment"),
    ("CA in use by another group", "PUT", "/enrollmentGroups/g1",
     _group, 409, "provisioning.ca_in_use"),
    ("not JSON", "PUT", "/enrollmentGroups/g1", lambda ca: b"{", 400,
     "provisioning.bad_enrollment"),
    ("bad certificate", "PUT", "/enrollments/dev1",
     lambda ca: {"attestation": {"type": "x509", "x509": {"clientCertificates": {
         "primary": {"certificate": "bm90IGEgY2VydA=="}}}}}, 400, "certificate.malformed"),
    ("no api-version", "GET", "/enrollmentGroups/plant", None, 400,
     "provisioning.bad_api_version"),
    ("no such group", "DELETE", "/enrollmentGroups/none", None, 404,
     "provisioning.enrollment_not_found"),
    ("no such route", "GET", "/enrollmentGroups/plant/extra", None, 404, "request.not_found"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [pytest.param(m, p, b, s, c, id=n) for n, m, p, b, s, c in BAD_SERVICE_CALLS],
)
def test_bad_service_calls_are_refused_and_change_nothing(
    dps: Provisioning, method: str, path: str, body: Any, status: int, code: str
) -> None:
    fleet = dps.server.fleet
    before = row_counts(fleet)
    query = "" if code == "provisioning.bad_api_version" else f"?{API}"
    payload = body(dps.ca_name) if body is not None else None
    with dps.admin() as admin:
        if isinstance(payload, bytes):
            answer = admin.request(method, path + query, content=payload)
        else:
            answer = admin.request(method, path + query, json=payload)
    assert answer.status_code == status, answer.text
    assert answer.json()["code"] == code
    assert row_counts(fleet) == before


def test_the_service_api_is_for_admins(dps: Provisioning) -> None:
    fleet = dps.server.fleet
    carol = fleet.principals.ensure("33333333-3333-4333-8333-333333333333", "carol")
    token = fleet.principals.create_token(Actor.local_admin(), carol.id).secret
    before = row_counts(fleet)
    with dps.device(None) as client:
        anonymous = client.get(f"/enrollmentGroups/plant?{API}")
        user = client.put(
            f"/enrollmentGroups/g1?{API}",
            json=_group(dps.ca_name),
            headers={"Authorization": f"Bearer {token}"},
        )
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "auth.missing")
    assert (user.status_code, user.json()["code"]) == (403, "auth.admin_required")
    assert row_counts(fleet) == before
