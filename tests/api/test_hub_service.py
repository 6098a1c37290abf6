"""The hub's Azure-compatible service API: SAS checks, then the real azure-iot-hub SDK over TLS."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fleetpki.services import hub_sas
from support.server import LiveServer, start_server

REPO = Path(__file__).resolve().parents[2]
AZURE_PYTHON = REPO / ".venv-azure" / "bin" / "python"
SCRIPT = Path(__file__).with_name("hub_sdk_script.py")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    with start_server(tmp_path_factory.mktemp("hub-service") / "home") as server:
        yield server


def _keys(live: LiveServer, policy: str) -> tuple[str, str]:
    keys = live.fleet.hub_sas.policy_keys(policy)
    return keys.primary, keys.secondary


def _get(live: LiveServer, path: str, token: str | None, **params: str) -> httpx.Response:
    headers = {"Authorization": token} if token else {}
    params.setdefault("api-version", "2021-04-12")
    with httpx.Client(verify=ssl.create_default_context(cafile=live.ca_bundle)) as client:
        return client.get(f"https://localhost:{live.port}{path}", headers=headers, params=params)


def _token(live: LiveServer, policy: str, *, key: str | None = None, ttl: int = 3600) -> str:
    key = key or _keys(live, policy)[0]
    return hub_sas.make_sas_token(f"localhost:{live.port}", policy, key, int(time.time()) + ttl)


@pytest.mark.parametrize("policy", ["iothubowner", "registryRead", "registryReadWrite"])
def test_registry_read_policies(live: LiveServer, policy: str) -> None:
    response = _get(live, "/statistics/devices", _token(live, policy))
    assert response.status_code == 200
    assert set(response.json()) == {"totalDeviceCount", "enabledDeviceCount", "disabledDeviceCount"}


def test_secondary_key_and_lower_case_sr(live: LiveServer) -> None:
    _, secondary = _keys(live, "iothubowner")
    assert _get(live, "/devices", _token(live, "iothubowner", key=secondary)).status_code == 200
    lowered = _token(live, "iothubowner").replace("%3A", "%3a")
    # The signature was computed over upper-case %3A: the lower-cased sr must not verify it...
    assert _get(live, "/devices", lowered).status_code == 401
    # ... but a token signed over the lower-case form does (ref §3.1).
    primary, _ = _keys(live, "iothubowner")
    import hashlib
    import hmac
    from urllib.parse import quote

    expiry = int(time.time()) + 600
    sr = f"localhost%3a{live.port}"
    digest = hmac.new(
        base64.b64decode(primary), f"{sr}\n{expiry}".encode(), hashlib.sha256
    ).digest()
    token = f"SharedAccessSignature sr={sr}&sig={quote(base64.b64encode(digest).decode(), safe='/')}&se={expiry}&skn=iothubowner"
    assert _get(live, "/devices", token).status_code == 200


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("none", 401),
        ("expired", 401),
        ("wrong_key", 401),
        ("wrong_host", 401),
        ("forbidden", 403),
        ("no_api_version", 400),
    ],
)
def test_sas_refusals(live: LiveServer, case: str, status: int) -> None:
    params: dict[str, str] = {}
    token: str | None = _token(live, "iothubowner")
    path = "/statistics/devices"
    if case == "none":
        token = None
    elif case == "expired":
        token = _token(live, "iothubowner", ttl=-10)
    elif case == "wrong_key":
        token = _token(live, "iothubowner", key=base64.b64encode(b"x" * 32).decode())
    elif case == "wrong_host":
        primary, _ = _keys(live, "iothubowner")
        token = hub_sas.make_sas_token(
            "evil.example", "iothubowner", primary, int(time.time()) + 60
        )
    elif case == "forbidden":
        token = _token(live, "service")
    elif case == "no_api_version":
        params["api-version"] = ""
    response = _get(live, path, token, **params)
    assert response.status_code == status
    assert "iothub-errorcode" in response.headers
    assert "Message" in response.json()


def test_the_azure_iot_hub_sdk(live: LiveServer) -> None:
    if not AZURE_PYTHON.exists():
        subprocess.run(["bash", str(REPO / "scripts" / "azure-venv.sh")], check=True)
    connection = live.fleet.hub_sas.connection_string("iothubowner", f"localhost:{live.port}")
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(live.ca_bundle)}
    result = subprocess.run(
        [str(AZURE_PYTHON), "-W", "ignore", str(SCRIPT), connection, "sdk-dev-1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["created"] == ["sdk-dev-1", "enabled", "certificateAuthority"]
    assert out["create_again"] == [409, 409001]
    assert out["etag_stable"] is True
    assert out["update_stale"] == [412, 412002]
    assert out["disabled"] == ["disabled", "maintenance"]
    assert out["twin"] == [{"site": "lab"}, {"rate": 5, "$version": 2}]
    assert out["method_offline"] == [404, 404103]
    assert out["stats"] == [1, 0, 1]
    assert out["service_stats"] == 0
    assert out["listed"] == ["sdk-dev-1"]
    assert out["query"] == ["sdk-dev-1"]
    assert out["after_delete"] == [404, 404001]
    assert sys.version_info >= (3, 11)


def _put(live: LiveServer, path: str, body: object, **headers: str) -> httpx.Response:
    headers["Authorization"] = _token(live, "iothubowner")
    with httpx.Client(verify=ssl.create_default_context(cafile=live.ca_bundle)) as client:
        return client.put(
            f"https://localhost:{live.port}{path}",
            json=body,
            headers=headers,
            params={"api-version": "2021-04-12"},
        )


def _sas_body(primary: str | None = None, secondary: str | None = None) -> dict[str, object]:
    keys = {"primaryKey": primary, "secondaryKey": secondary}
    return {"deviceId": "sas-api", "authentication": {"type": "sas", "symmetricKey": keys}}


@pytest.mark.parametrize(
    "bad_key",
    [
        "not base64!",
        base64.b64encode(b"k" * 15).decode(),  # Azure's bounds: 16 to 64 bytes
        base64.b64encode(b"k" * 65).decode(),
    ],
)
def test_sas_device_keys_through_the_service_api(live: LiveServer, bad_key: str) -> None:
    # A bad key creates nothing.
    refused = _put(live, "/devices/sas-api", _sas_body(bad_key))
    assert refused.status_code == 400
    assert json.loads(refused.json()["Message"])["info"]["fleetpkiCode"] == "hub.bad_symmetric_key"
    assert _get(live, "/devices/sas-api", _token(live, "iothubowner")).status_code == 404
    # Without keys, both are generated and returned, as Azure does; GET returns them too.
    created = _put(live, "/devices/sas-api", _sas_body()).json()
    keys = created["authentication"]["symmetricKey"]
    assert created["authentication"]["type"] == "sas"
    assert all(len(base64.b64decode(keys[k])) == 32 for k in ("primaryKey", "secondaryKey"))
    read = _get(live, "/devices/sas-api", _token(live, "registryRead")).json()
    assert read["authentication"]["symmetricKey"] == keys
    # A bad key on update changes nothing; a good one replaces the key it names only.
    etag = created["etag"]
    refused = _put(live, "/devices/sas-api", _sas_body(bad_key), **{"If-Match": f'"{etag}"'})
    assert refused.status_code == 400
    unchanged = _get(live, "/devices/sas-api", _token(live, "iothubowner")).json()
    assert (unchanged["etag"], unchanged["authentication"]["symmetricKey"]) == (etag, keys)
    new_primary = base64.b64encode(b"n" * 32).decode()
    rotated = _put(live, "/devices/sas-api", _sas_body(new_primary), **{"If-Match": f'"{etag}"'})
    assert rotated.json()["authentication"]["symmetricKey"] == {
        "primaryKey": new_primary,
        "secondaryKey": keys["secondaryKey"],
    }
    live.fleet.hub_devices.delete("sas-api")
