"""The ports the Azure SDKs dial (ref §0): ``serve --azure-ports``, and what a refused bind says."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fleetpki.application import init_home
from fleetpki.cli.serve import azure_port_notes
from fleetpki.services.authority import HierarchySpec
from fleetpki.settings import Settings

# The Azure SDKs dial fixed ports (8883, 443): tests that bind them share one xdist worker.
pytestmark = pytest.mark.xdist_group("azure_ports")

SRC = Path(__file__).resolve().parents[2] / "src"

BIND = textwrap.dedent(
    """
    import json, sys
    from fleetpki.errors import FleetPKIError
    from fleetpki.api.server import bind_socket
    from fleetpki.hub.server import HubServer
    from fleetpki.listener import listening_socket
    out = []
    try:
        bind_socket("127.0.0.1", 443)
    except FleetPKIError as exc:
        out.append([exc.code, exc.message])
    try:
        listening_socket("127.0.0.1", 80, option="--mqtt-port", fallback=8883)
    except FleetPKIError as exc:
        out.append([exc.code, exc.message])
    print(json.dumps(out))
    """
)


def test_a_privileged_port_is_refused_with_the_ways_to_grant_or_forward_it() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the bind as an unprivileged user")
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 80:
        pytest.skip("this kernel lets every user bind low ports")
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", BIND],
        env={**os.environ, "PYTHONPATH": str(SRC), "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (api_code, api_message), (mqtt_code, mqtt_message) = json.loads(done.stdout)
    assert (api_code, mqtt_code) == ("serve.privileged_port", "serve.privileged_port")
    assert "127.0.0.1:443 (--api-port)" in api_message
    for way in (
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "setcap cap_net_bind_service=+ep",
        "net.ipv4.ip_unprivileged_port_start=443",
        "--dport 443 -j REDIRECT --to-ports 8443",
    ):
        assert way in api_message
    assert "(--mqtt-port)" in mqtt_message and "--to-ports 8883" in mqtt_message


@pytest.mark.parametrize(
    ("api_port", "mqtt_port", "only", "expected"),
    [
        (443, 8883, None, []),
        (8443, 8883, None, ["HostName=hub.lan:8443 and device ones HostName=hub.lan"]),
        (8443, 8883, "hub", []),  # no API: nothing to say about its HostName
        (443, 1883, None, ["dials MQTT on 8883 only"]),
    ],
)
def test_serve_says_what_the_azure_sdks_cannot_reach(
    api_port: int, mqtt_port: int, only: str | None, expected: list[str]
) -> None:
    notes = azure_port_notes("hub.lan", api_port, mqtt_port, only)
    assert len(notes) == len(expected)
    for note, text in zip(notes, expected, strict=True):
        assert text in note


@pytest.mark.parametrize(
    ("amqp_port", "expected"),
    [(5671, []), (-1, []), (15671, ["dial AMQP on 5671 only"])],
)
def test_serve_says_when_the_amqp_port_is_out_of_the_sdks_reach(
    amqp_port: int, expected: list[str]
) -> None:
    notes = azure_port_notes("hub.lan", 443, 8883, None, amqp_port)
    assert len(notes) == len(expected)
    for note, text in zip(notes, expected, strict=True):
        assert text in note


def test_on_443_the_service_connection_string_names_the_bare_host(
    tmp_path: Path, key_passphrase: None
) -> None:
    # The service SDK builds https://{HostName}/..., the device SDK dials {HostName}:8883:
    # with the API on 443 one HostName serves both.
    settings = Settings.default_for(tmp_path / "home").with_changes(api_port=443)
    fleet = init_home(settings, HierarchySpec()).app
    try:
        assert fleet.hub_sas.connection_string("iothubowner").startswith("HostName=localhost;")
    finally:
        fleet.close()
    other = Settings.default_for(tmp_path / "other")
    fleet = init_home(other, HierarchySpec()).app
    try:
        text = fleet.hub_sas.connection_string("iothubowner")
        assert text.startswith("HostName=localhost:8443;")
    finally:
        fleet.close()


def test_azure_ports_conflicts_with_other_ports(tmp_path: Path) -> None:
    env = {**os.environ, "FLEETPKI_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "fleetpki", "serve", "--azure-ports", "--api-port", "8443"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "cli.conflicting_ports" in done.stderr and "Traceback" not in done.stderr
