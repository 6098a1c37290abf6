"""``fleetpki device simulate --provision``: the tutorial's provisioning sibling against
``fleetpki serve``: enrolled over the EZCA API, never registered in the hub beforehand,
provisioned through DPS on the hub's port, connected to the assigned hub, five messages."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from fleetpki.cli.main import app
from fleetpki.device import SimulatorSettings, simulate_device
from fleetpki.pki.keys import KeySpec
from fleetpki.services import Actor
from fleetpki.services.provisioning_enrollments import EnrollmentKind, EnrollmentSpec
from support.server import LiveServer, start_server

TWIN = {"tags": {"line": "2"}, "properties": {"desired": {"interval": 10}}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Serve:
    live: LiveServer
    mqtt_port: int
    scope: str


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    mqtt_port = _free_port()  # start_server does not report the hub's port
    home = tmp_path_factory.mktemp("device-provision") / "home"
    with start_server(home, mqtt_port=mqtt_port) as live:
        fleet = live.fleet
        issuing = fleet.cas.current_issuer().id
        fleet.hub_trust.trust_local_ca(issuing)
        fleet.provisioning_enrollments.add(
            Actor.local_admin(),
            EnrollmentSpec(EnrollmentKind.GROUP, "line-2", ca=issuing, initial_twin=TWIN),
        )
        yield Serve(live, mqtt_port, fleet.provisioning.id_scope)


def _args(serve: Serve, *extra: str) -> list[str]:
    return [
        "device", "simulate", "--key", "ec-p256",
        "--server", serve.live.base_url, "--token", serve.live.admin_token,
        "--ca-bundle", str(serve.live.ca_bundle),
        "--hub-host", "localhost", "--mqtt-port", str(serve.mqtt_port), *extra,
    ]  # fmt: skip


def test_simulate_provisions_then_sends(serve: Serve) -> None:
    fleet = serve.live.fleet
    steps: list[tuple[str, str]] = []
    settings = SimulatorSettings(
        server_url=serve.live.base_url,
        token=serve.live.admin_token,
        hub_host="localhost",
        verify=serve.live.ca_bundle,
        mqtt_port=serve.mqtt_port,
        key_spec=KeySpec.EC_P256,
        id_scope=serve.scope,
    )
    result = simulate_device(settings, registry=None, report=lambda s, d: steps.append((s, d)))
    device_id = result.identity.device_id
    assert [s for s, _ in steps] == [
        "choose CA", "device id", "register in hub", "register domain", "certificate",
        "provision", "connect", *["telemetry"] * 5,
    ]  # fmt: skip
    assert result.registered_in_hub is None
    assert result.assignment is not None
    assert (result.assignment.assigned_hub, result.assignment.device_id) == (
        fleet.settings.hostname,
        device_id,
    )
    assert result.assignment.substatus == "initialAssignment"
    rows = fleet.hub_messages.list_telemetry(device_id=device_id)
    assert [json.loads(r.body) for r in rows] == list(result.sent)
    assert fleet.hub_devices.get(device_id).auth_type == "certificateAuthority"
    assert fleet.hub_twins.get(device_id).tags == {"line": "2"}


def test_cli_simulate_provision(serve: Serve) -> None:
    fleet = serve.live.fleet
    before = {d.device_id for d in fleet.hub_devices.list()}
    result = CliRunner().invoke(app, _args(serve, "--provision", "--id-scope", serve.scope))
    assert result.exit_code == 0, result.output
    (device_id,) = {d.device_id for d in fleet.hub_devices.list()} - before
    assert f"assigned to {fleet.settings.hostname} as {device_id}" in result.output
    assert len(fleet.hub_messages.list_telemetry(device_id=device_id)) == 5
    assert serve.live.admin_token not in result.output


def test_cli_provision_needs_an_id_scope(serve: Serve) -> None:
    result = CliRunner().invoke(app, _args(serve, "--provision"), env={"FLEETPKI_ID_SCOPE": ""})
    assert result.exit_code == 1
    assert "cli.id_scope_required" in result.output


def test_cli_provision_with_an_unknown_id_scope_is_refused(serve: Serve) -> None:
    fleet = serve.live.fleet
    before = {d.device_id for d in fleet.hub_devices.list()}
    result = CliRunner().invoke(app, _args(serve, "--provision", "--id-scope", "0ne00000000"))
    assert result.exit_code == 1
    assert "provisioning.refused" in result.output
    assert {d.device_id for d in fleet.hub_devices.list()} == before
