"""Bearer tokens on the hub's service API: an OIDC issuer's tokens for https://iothubs.azure.net.

Azure IoT Hub takes Microsoft Entra tokens for the resource ``https://iothubs.azure.net``
on its service API; the built-in hub takes those of the configured OIDC issuer (here a
test issuer whose key the test holds) and of fleetpki's own token endpoint (exercised
through the azure connector in tests/connectors). Admins write the registry; any
other principal only reads it.
"""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from fleetpki.services.context import LOCAL_ADMIN_ID
from support.server import LiveServer, start_server

pytestmark = pytest.mark.slow

ISSUER = "https://sts.test.example/5c9b7a5e-0000-4000-8000-000000000001/v2.0"
KID = "test-key"


@dataclass(frozen=True, slots=True)
class Issuer:
    """The test OIDC issuer: its key signs the tokens the server is configured to trust."""

    key: ec.EllipticCurvePrivateKey

    def token(self, subject: str, audience: str, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": audience,
            "oid": subject,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            **claims,
        }
        return jwt.encode(body, self.key, algorithm="ES256", headers={"kid": KID})


@pytest.fixture(scope="module", name="issuer")
def issuer_fixture() -> Issuer:
    return Issuer(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="module", name="live")
def live_fixture(
    tmp_path_factory: pytest.TempPathFactory, issuer: Issuer, key_passphrase: None
) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("hub-bearer")
    jwks = folder / "jwks.json"
    jwk = {**ECAlgorithm.to_jwk(issuer.key.public_key(), as_dict=True), "kid": KID}
    jwks.write_text(json.dumps({"keys": [jwk]}))
    with start_server(
        folder / "home", oidc_issuer=ISSUER, oidc_audience="api://fleetpki", oidc_jwks=str(jwks)
    ) as server:
        yield server


def _call(
    live: LiveServer, method: str, path: str, token: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    with httpx.Client(verify=ssl.create_default_context(cafile=str(live.ca_bundle))) as client:
        return client.request(
            method,
            f"{live.base_url}{path}",
            params={"api-version": "2021-04-12"},
            headers={"Authorization": f"Bearer {token}"},
            json=body,
        )


def _message(response: httpx.Response) -> str:
    return str(json.loads(response.json()["Message"])["message"])


_DEVICE = {"status": "enabled", "authentication": {"type": "certificateAuthority"}}


@pytest.mark.parametrize("audience", ["https://iothubs.azure.net", "https://iothubs.azure.net/"])
def test_an_admins_token_writes_the_registry(
    live: LiveServer, issuer: Issuer, audience: str
) -> None:
    token = issuer.token(LOCAL_ADMIN_ID, audience)
    device = f"bearer-{uuid.uuid4().hex[:8]}"
    created = _call(live, "PUT", f"/devices/{device}", token, {"deviceId": device, **_DEVICE})
    assert created.status_code == 200, created.text
    assert created.json()["authentication"]["type"] == "certificateAuthority"
    assert _call(live, "GET", f"/devices/{device}", token).status_code == 200


def test_another_principal_reads_but_may_not_write(live: LiveServer, issuer: Issuer) -> None:
    principal = str(uuid.uuid4())
    token = issuer.token(principal, "https://iothubs.azure.net")

    assert _call(live, "GET", "/statistics/devices", token).status_code == 200
    missing = _call(live, "GET", "/devices/nobody", token)
    assert missing.status_code == 404
    assert missing.headers["iothub-errorcode"] == "DeviceNotFound"

    refused = _call(live, "PUT", "/devices/nobody", token, {"deviceId": "nobody", **_DEVICE})
    assert refused.status_code == 403
    assert refused.headers["iothub-errorcode"] == "IotHubUnauthorizedAccess"
    assert principal in _message(refused)
    assert "IoT Hub Registry Contributor" in _message(refused)
    # The principal was recorded on first sight, as on every OIDC route.
    assert live.fleet.principals.get(principal).is_admin is False


@pytest.mark.parametrize(
    ("token_for", "says"),
    [
        (lambda i: i.token(LOCAL_ADMIN_ID, "https://management.azure.com/"), "audience"),
        (lambda i: i.token(LOCAL_ADMIN_ID, "https://iothubs.azure.net", exp=1), "Expired"),
        (
            lambda i: i.token(LOCAL_ADMIN_ID, "https://iothubs.azure.net", iss="https://other/"),
            "issuer",
        ),
        (lambda i: "not-a-jwt", "not a JWT"),
    ],
    ids=["wrong-audience", "expired", "foreign-issuer", "garbage"],
)
def test_bad_bearer_tokens_are_401(
    live: LiveServer, issuer: Issuer, token_for: Any, says: str
) -> None:
    refused = _call(live, "GET", "/devices/nobody", token_for(issuer))
    assert refused.status_code == 401
    assert refused.headers["iothub-errorcode"] == "IotHubUnauthorizedAccess"
    assert says in _message(refused)


def test_a_token_signed_by_another_key_is_401(live: LiveServer) -> None:
    forger = Issuer(ec.generate_private_key(ec.SECP256R1()))
    refused = _call(
        live, "GET", "/devices/nobody", forger.token(LOCAL_ADMIN_ID, "https://iothubs.azure.net")
    )
    assert refused.status_code == 401


def test_the_token_endpoint_is_not_trusted_while_off(live: LiveServer) -> None:
    # The server runs with the token endpoint off: a token in its issuer's name is foreign.
    issuer = live.fleet.token_issuer
    assert issuer.enabled is False
    forged = jwt.encode(
        {
            "iss": issuer.issuer,
            "aud": "https://iothubs.azure.net/",
            "oid": LOCAL_ADMIN_ID,
            "exp": int(time.time()) + 600,
        },
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
    )
    refused = _call(live, "GET", "/devices/nobody", forged)
    assert refused.status_code == 401
    assert "issuer" in _message(refused)
