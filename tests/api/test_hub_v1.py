"""``/v1/hub``: stored telemetry as JSON and as server-sent events, C2D sends, and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx

from fleetpki.services import Actor
from fleetpki.services.hub_devices import DeviceSpec
from fleetpki.services.hub_messages import TelemetryInput
from support.server import start_server

FLEETPKI = str(Path(sys.executable).parent / "fleetpki")


def _seed(fleet, device: str = "dev-1", count: int = 3) -> None:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    fleet.hub_devices.put(DeviceSpec(device_id=device))
    fleet.hub_messages.store_telemetry(
        [
            TelemetryInput(
                device_id=device,
                enqueued_at=now,
                body=json.dumps({"n": i}).encode(),
                system_properties={"message-id": f"m{i}"},
                properties={"temperatureAlert": "false"},
            )
            for i in range(count)
        ]
        + [TelemetryInput(device_id=device, enqueued_at=now, body=b"\xff\x00")]
    )


def test_messages_stream_and_c2d_over_real_tls(tmp_path: Path) -> None:
    with start_server(tmp_path / "home") as server:
        _seed(server.fleet)
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        with httpx.Client(
            base_url=server.base_url,
            verify=ssl.create_default_context(cafile=server.ca_bundle),
            headers=headers,
        ) as http:
            page = http.get("/v1/hub/messages", params={"device": "dev-1"}).json()
            assert [m["body"] for m in page[:3]] == ['{"n": 0}', '{"n": 1}', '{"n": 2}']
            assert page[0]["properties"] == {"temperatureAlert": "false"}
            assert page[3]["bodyEncoding"] == "base64"
            assert http.get("/v1/hub/messages", params={"after": page[-1]["id"]}).json() == []
            assert http.get("/v1/hub/messages").status_code == 200
            assert (
                httpx.get(
                    f"{server.base_url}/v1/hub/messages",
                    verify=ssl.create_default_context(cafile=server.ca_bundle),
                ).status_code
                == 401
            )

            # The stream starts at "now"; a message stored afterwards arrives as an event.
            with http.stream(
                "GET", "/v1/hub/messages/stream", params={"device": "dev-1"}, timeout=30
            ) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines = stream.iter_lines()
                assert next(lines).startswith(": fleetpki")
                _seed_one(server.fleet)
                event = [line for line in (next(lines) for _ in range(4)) if line][:3]
            assert event[0] == f"id: {page[-1]['id'] + 1}"
            assert event[1] == "event: message"
            assert json.loads(event[2].removeprefix("data: "))["body"] == "live"

            sent = http.post(
                "/v1/hub/devices/dev-1/messages", json={"body": "reboot", "properties": {"k": "v"}}
            )
            assert sent.status_code == 201
            missing = http.post("/v1/hub/devices/ghost/messages", json={"body": "x"})
            assert missing.status_code == 404
            assert missing.json()["code"] == "hub.device_not_found"
        queued = server.fleet.hub_messages.pending_c2d("dev-1")
        assert [(m.body, m.properties) for m in queued] == [(b"reboot", {"k": "v"})]
        (entry,) = server.fleet.audit.latest(
            Actor.local_admin(), object_type="hub_device", object_id="dev-1"
        )
        assert entry.action == "hub.c2d_send"
        assert entry.details == {"message_id": sent.json()["messageId"], "bytes": 6}


def _seed_one(fleet) -> None:  # type: ignore[no-untyped-def]
    fleet.hub_messages.store_telemetry(
        [TelemetryInput(device_id="dev-1", enqueued_at=dt.datetime.now(dt.UTC), body=b"live")]
    )


def test_cli_monitor_and_send(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "FLEETPKI_KEY_PASSPHRASE"} | {
        "FLEETPKI_HOME": str(home)
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FLEETPKI, *args], env=env, capture_output=True, text=True, timeout=120
        )

    assert cli("init").returncode == 0
    assert cli("hub", "device", "add", "dev-1").returncode == 0
    from fleetpki.application import FleetPKI
    from fleetpki.settings import Settings

    fleet = FleetPKI.open(Settings.load(home))
    try:
        fleet.hub_messages.store_telemetry(
            [
                TelemetryInput(
                    device_id="dev-1",
                    enqueued_at=dt.datetime.now(dt.UTC),
                    body=b'{"temperature": 31}',
                    properties={"temperatureAlert": "true"},
                )
            ]
        )
        shown = cli("hub", "monitor", "--device", "dev-1", "--no-follow")
        assert shown.returncode == 0, shown.stderr
        assert '"origin": "dev-1"' in shown.stdout
        assert "temperatureAlert" in shown.stdout
        sent = cli("hub", "send", "dev-1", "hello", "--property", "a=b")
        assert sent.returncode == 0, sent.stderr
        bad = cli("hub", "send", "dev-1", "hello", "--property", "nokey")
        assert bad.returncode == 1
        assert "(cli.bad_property)" in bad.stderr
        assert [m.body for m in fleet.hub_messages.pending_c2d("dev-1")] == [b"hello"]
    finally:
        fleet.close()
