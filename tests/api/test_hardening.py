"""Hostile and careless input over real TLS: a 4xx with a stable code, never a 5xx.

Each case of issue 14 is a row here, sent to a real ``fleetpki serve`` (uvicorn on
uvloop): integers that overflow SQLite's int64, JSON values of the wrong type, a
header with a Unicode digit, bodies over the limit with and without Content-Length,
and CSRs signed with weak hashes. The Azure-compatible routes answer in Azure's error
format (ref §3.5, and ARM's for the management plane), and the connection that got a
4xx (or an unexpected 500) serves the next request.
"""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from support.database import raw_session
from support.server import LiveServer, start_server

pytestmark = pytest.mark.slow

API_VERSION = {"api-version": "2021-04-12"}
ARM_HUB = "/subscriptions/{s}/resourceGroups/{g}/providers/Microsoft.Devices/IotHubs/{h}"


@dataclass
class Call:
    """One HTTP call."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)
    json_body: Any = None
    content: Any = None


@dataclass
class Env:
    """The live server, a client on one connection, and what the cases need."""

    live: LiveServer
    client: httpx.Client
    tmp: Path

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.live.admin_token}"}

    def send(self, call: Call) -> httpx.Response:
        headers = {**self.auth(), **call.headers}
        return self.client.request(
            call.method,
            call.path,
            params=call.params or None,
            headers=headers,
            json=call.json_body,
            content=call.content,
        )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with start_server(tmp_path_factory.mktemp("hardening") / "home") as server:
        yield server


def _client(live: LiveServer) -> httpx.Client:
    context = ssl.create_default_context(cafile=live.ca_bundle)
    return httpx.Client(
        verify=context,
        base_url=f"https://localhost:{live.port}",
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        timeout=30,
    )


@pytest.fixture
def env(live: LiveServer, tmp_path: Path) -> Iterator[Env]:
    with _client(live) as client:
        yield Env(live, client, tmp_path)


def _client_port(response: httpx.Response) -> int:
    stream = response.extensions["network_stream"]
    return int(stream.get_extra_info("client_addr")[1])


def _device(env: Env) -> str:
    """A registered domain (device id) the admin may request for."""
    name = f"dev-{uuid.uuid4().hex[:12]}"
    answer = env.client.post("/v1/domains", json={"name": name}, headers=env.auth())
    assert answer.status_code == 201, answer.text
    return name


def _openssl_csr(env: Env, cn: str, digest: str, key_type: str = "rsa") -> str:
    key = env.tmp / f"{digest}-{key_type}.key"
    if key_type == "rsa":
        subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
    else:
        subprocess.run(
            ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key],
            check=True,
            capture_output=True,
        )
    done = subprocess.run(
        ["openssl", "req", "-new", f"-{digest}", "-key", key, "-subj", f"/CN={cn}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def _issued_serial(env: Env) -> str:
    device = _device(env)
    csr = _openssl_csr(env, device, "sha256", "ec")
    answer = env.client.post(
        "/v1/certificates", json={"csr": csr, "domain": device}, headers=env.auth()
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["certificate"]["serial"])


# --------------------------------------------------------------------------- the cases


def offset_past_int64(env: Env) -> Call:
    return Call("GET", "/v1/certificates", {"offset": "9223372036854775808"})


def limit_past_int64(env: Env) -> Call:
    return Call("GET", "/v1/audit", {"limit": "99999999999999999999999"})


def message_id_past_int64(env: Env) -> Call:
    return Call("GET", "/v1/hub/messages", {"after": "100000000000000000000"})


def negative_message_id_past_int64(env: Env) -> Call:
    return Call("GET", "/v1/hub/messages", {"after": "-100000000000000000000"})


def stream_after_past_int64(env: Env) -> Call:
    return Call("GET", "/v1/hub/messages/stream", {"after": "100000000000000000000"})


def revoke_reason_true(env: Env) -> Call:
    serial = _issued_serial(env)
    return Call("POST", f"/v1/certificates/{serial}/revoke", json_body={"reason": True})


def revoke_reason_float(env: Env) -> Call:
    serial = _issued_serial(env)
    return Call("POST", f"/v1/certificates/{serial}/revoke", json_body={"reason": 1.0})


def validity_days_as_string(env: Env) -> Call:
    device = _device(env)
    csr = _openssl_csr(env, device, "sha256", "ec")
    body = {"csr": csr, "domain": device, "validity_days": "30"}
    return Call("POST", "/v1/certificates", json_body=body)


def validity_days_as_bool(env: Env) -> Call:
    device = _device(env)
    csr = _openssl_csr(env, device, "sha256", "ec")
    body = {"csr": csr, "domain": device, "validity_days": True}
    return Call("POST", "/v1/certificates", json_body=body)


def ezca_validity_as_bool(env: Env) -> Call:
    body = {"CAID": "x", "CSR": "x", "ValidityInDays": True, "SubjectName": "CN=x"}
    return Call("POST", "/api/CA/RequestSSLCertificate", json_body=body)


def sha1_csr(env: Env) -> Call:
    device = _device(env)
    body = {"csr": _openssl_csr(env, device, "sha1"), "domain": device}
    return Call("POST", "/v1/certificates", json_body=body)


def md5_csr(env: Env) -> Call:
    device = _device(env)
    body = {"csr": _openssl_csr(env, device, "md5"), "domain": device}
    return Call("POST", "/v1/certificates", json_body=body)


def ecdsa_sha1_csr(env: Env) -> Call:
    device = _device(env)
    body = {"csr": _openssl_csr(env, device, "sha1", "ec"), "domain": device}
    return Call("POST", "/v1/certificates", json_body=body)


def _big_body() -> bytes:
    return b'{"csr": "' + b"x" * 3_000_000 + b'"}'


def chunked_body_over_limit(env: Env) -> Call:
    body = _big_body()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    return Call(
        "POST", "/v1/certificates", headers={"Content-Type": "application/json"}, content=chunks()
    )


def declared_body_over_limit(env: Env) -> Call:
    return Call(
        "POST",
        "/v1/certificates",
        headers={"Content-Type": "application/json"},
        content=_big_body(),
    )


NativeCase = tuple[Callable[[Env], Call], int, str]
NATIVE: list[NativeCase] = [
    (offset_past_int64, 422, "request.invalid"),
    (limit_past_int64, 422, "request.invalid"),
    (message_id_past_int64, 422, "request.invalid"),
    (negative_message_id_past_int64, 422, "request.invalid"),
    (stream_after_past_int64, 422, "request.invalid"),
    (revoke_reason_true, 422, "request.invalid"),
    (revoke_reason_float, 422, "request.invalid"),
    (validity_days_as_string, 422, "request.invalid"),
    (validity_days_as_bool, 422, "request.invalid"),
    (ezca_validity_as_bool, 422, "request.invalid"),
    (sha1_csr, 400, "csr.weak_signature_hash"),
    (md5_csr, 400, "csr.weak_signature_hash"),
    (ecdsa_sha1_csr, 400, "csr.weak_signature_hash"),
    (chunked_body_over_limit, 413, "request.too_large"),
    (declared_body_over_limit, 413, "request.too_large"),
]


def _counts(live: LiveServer) -> dict[str, int]:
    with raw_session(live.fleet) as session:
        return {
            table: int(session.scalar(text(f"SELECT count(*) FROM {table}")))
            for table in ("certificates", "audit_log", "outbox", "hub_devices")
        } | {
            "revoked": int(
                session.scalar(text("SELECT count(*) FROM certificates WHERE status = 'revoked'"))
            )
        }


@pytest.mark.parametrize(("prepare", "status", "code"), NATIVE, ids=[c[0].__name__ for c in NATIVE])
def test_native_bad_input_gets_a_4xx_and_writes_nothing(
    env: Env, prepare: Callable[[Env], Call], status: int, code: str
) -> None:
    call = prepare(env)
    before = _counts(env.live)
    answer = env.send(call)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == code
    assert _counts(env.live) == before
    if status != 413:
        # The connection that got the refusal serves the next request.
        again = env.client.get("/healthz")
        assert again.status_code == 200
        assert _client_port(again) == _client_port(answer)


@pytest.mark.parametrize(
    ("prepare", "named"),
    [(sha1_csr, "SHA-1"), (md5_csr, "MD5"), (ecdsa_sha1_csr, "SHA-1")],
    ids=["rsa-sha1", "rsa-md5", "ecdsa-sha1"],
)
def test_weak_csr_hash_is_named(env: Env, prepare: Callable[[Env], Call], named: str) -> None:
    answer = env.send(prepare(env))
    assert answer.json()["code"] == "csr.weak_signature_hash"
    assert named in answer.json()["detail"]


def test_revoke_reason_true_revokes_nothing(env: Env) -> None:
    serial = _issued_serial(env)
    answer = env.client.post(
        f"/v1/certificates/{serial}/revoke", json={"reason": True}, headers=env.auth()
    )
    assert 400 <= answer.status_code < 500
    shown = env.client.get(f"/v1/certificates/{serial}", headers=env.auth())
    assert shown.json()["status"] == "valid"
    assert shown.json()["revocation_reason"] is None


# --------------------------------------------------------------------------- Azure routes


def thumbprint_as_number(env: Env) -> Call:
    body = {
        "deviceId": "d-num",
        "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": 5}},
    }
    return Call("PUT", "/devices/d-num", API_VERSION, json_body=body)


def status_reason_as_object(env: Env) -> Call:
    body = {"deviceId": "d-obj", "status": "disabled", "statusReason": {"why": 1}}
    return Call("PUT", "/devices/d-obj", API_VERSION, json_body=body)


def status_as_number(env: Env) -> Call:
    return Call("PUT", "/devices/d-st", API_VERSION, json_body={"status": 1})


def auth_type_as_list(env: Env) -> Call:
    body = {"authentication": {"type": ["selfSigned"]}}
    return Call("PUT", "/devices/d-at", API_VERSION, json_body=body)


def continuation_with_unicode_digit(env: Env) -> Call:
    return Call(
        "POST",
        "/devices/query",
        API_VERSION,
        headers={"x-ms-continuation": "²".encode()},
        json_body={"query": "SELECT * FROM devices"},
    )


def continuation_past_int64(env: Env) -> Call:
    return Call(
        "POST",
        "/devices/query",
        API_VERSION,
        headers={"x-ms-continuation": "99999999999999999999999"},
        json_body={"query": "SELECT * FROM devices"},
    )


def max_item_count_not_a_number(env: Env) -> Call:
    return Call(
        "POST",
        "/devices/query",
        API_VERSION,
        headers={"x-ms-max-item-count": "many"},
        json_body={"query": "SELECT * FROM devices"},
    )


def top_past_int64(env: Env) -> Call:
    return Call("GET", "/devices", {**API_VERSION, "top": "99999999999999999999"})


def twin_patch_not_an_object(env: Env) -> Call:
    return Call("PATCH", "/twins/nobody", API_VERSION, json_body=[1, 2])


def method_timeout_as_bool(env: Env) -> Call:
    body = {"methodName": "reboot", "responseTimeoutInSeconds": True}
    return Call("POST", "/twins/nobody/methods", API_VERSION, json_body=body)


def query_not_a_string(env: Env) -> Call:
    return Call("POST", "/devices/query", API_VERSION, json_body={"query": {"x": 1}})


AZURE: list[tuple[Callable[[Env], Call], int]] = [
    (thumbprint_as_number, 400),
    (status_reason_as_object, 400),
    (status_as_number, 400),
    (auth_type_as_list, 400),
    (continuation_with_unicode_digit, 400),
    (continuation_past_int64, 400),
    (max_item_count_not_a_number, 400),
    (top_past_int64, 400),
    (twin_patch_not_an_object, 400),
    (method_timeout_as_bool, 400),
    (query_not_a_string, 400),
]


def _assert_azure_error(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers.get("iothub-errorcode"), answer.headers
    body = answer.json()
    assert set(body) == {"Message", "ExceptionMessage"}, body
    inner = json.loads(body["Message"])
    assert {"errorCode", "trackingId", "message", "timestampUtc"} <= set(inner)
    assert str(inner["errorCode"]).startswith(str(status))
    return dict(inner)


@pytest.mark.parametrize(("prepare", "status"), AZURE, ids=[c[0].__name__ for c in AZURE])
def test_azure_bad_input_gets_azure_error_and_keeps_the_connection(
    env: Env, prepare: Callable[[Env], Call], status: int
) -> None:
    before = _counts(env.live)
    answer = env.send(prepare(env))
    _assert_azure_error(answer, status)
    assert _counts(env.live) == before
    again = env.client.get("/statistics/devices", params=API_VERSION, headers=env.auth())
    assert again.status_code == 200
    assert _client_port(again) == _client_port(answer)


# --------------------------------------------------------------------------- unexpected errors


@pytest.fixture
def breakable(tmp_path: Path) -> Iterator[LiveServer]:
    """A server of its own, since these tests break its database on purpose."""
    with start_server(tmp_path / "home") as server:
        yield server


def _break(live: LiveServer, table: str) -> None:
    # A real failure of a real component: the table the route reads is gone.
    with raw_session(live.fleet) as session:
        session.execute(text(f"ALTER TABLE {table} RENAME TO {table}_gone"))


def _errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    # The API's and the HTTP server's own (uvicorn logs what escapes the app); the
    # server's background housekeeping may trip over the broken table too.
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith(("fleetpki.api", "uvicorn"))
    ]


def test_unexpected_error_on_azure_route_is_azure_shaped_and_keeps_the_connection(
    breakable: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with _client(breakable) as client:
        headers = {"Authorization": f"Bearer {breakable.admin_token}"}
        assert client.get("/devices", params=API_VERSION, headers=headers).status_code == 200
        _break(breakable, "hub_devices")
        caplog.clear()
        answer = client.get("/devices", params=API_VERSION, headers=headers)
        inner = _assert_azure_error(answer, 500)
        assert answer.headers["iothub-errorcode"] == "ServerError"
        assert "hub_devices" not in answer.text  # no internals
        again = client.get("/healthz")
        assert again.status_code == 200
        assert _client_port(again) == _client_port(answer)
    logged = _errors_logged(caplog)
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert inner["trackingId"] in logged[0].getMessage()


def test_unexpected_error_on_arm_route_is_arm_shaped(breakable: LiveServer) -> None:
    identity = breakable.fleet.hub_management.identity
    path = ARM_HUB.format(
        s=identity.subscription_id, g=identity.resource_group, h=identity.hub_name
    )
    with _client(breakable) as client:
        headers = {"Authorization": f"Bearer {breakable.admin_token}"}
        params = {"api-version": "2023-06-30"}
        listed = client.get(path + "/certificates", params=params, headers=headers)
        assert listed.status_code == 200, listed.text
        _break(breakable, "hub_cas")
        answer = client.get(path + "/certificates", params=params, headers=headers)
        assert answer.status_code == 500
        body = answer.json()
        assert body["code"] == 500001 and body["httpStatusCode"] == "InternalServerError"
        assert "hub_cas" not in answer.text
        again = client.get("/healthz")
        assert _client_port(again) == _client_port(answer)


def test_unexpected_error_on_native_route_is_one_problem_and_keeps_the_connection(
    breakable: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with _client(breakable) as client:
        headers = {"Authorization": f"Bearer {breakable.admin_token}"}
        _break(breakable, "certificates")
        caplog.clear()
        answer = client.get("/v1/certificates", headers=headers)
        assert answer.status_code == 500
        problem = answer.json()
        assert problem["code"] == "internal.error"
        assert "certificates" not in problem["detail"]
        again = client.get("/healthz")
        assert again.status_code == 200
        assert _client_port(again) == _client_port(answer)
    logged = _errors_logged(caplog)
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert problem["request_id"] in logged[0].getMessage()
