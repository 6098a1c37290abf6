"""``fleetpki demo``: the whole story on this machine, with real servers and a real device.

In a temporary home and on free ports it creates a CA hierarchy, starts the CA's
HTTPS API and the MQTT hub, links the hub as an Azure IoT Hub is linked (its
management plane through azure-mgmt-iothub, tokens from the hub's own
client-credentials endpoint, which the demo turns on) and trusts the issuing CA
there by proof of possession, runs the tutorial's device (hub registration through the service
API, domain, RSA-4096 key and CSR, a 10-day certificate over the EZCA routes,
MQTT over TLS, five telemetry messages), shows what the hub stored, renews the
certificate with itself and reconnects, renews the issuing CA with a new key (the
hub gets it first; the device renews onto it; the old generation stays trusted while
what it signed is outstanding), moves the servers' own TLS certificate onto the new
generation so that the old one drains and is retired from the hub, provisions a second
device with no hub registration through the provisioning service (Azure DPS's protocol,
an enrollment group for the issuing CA), revokes the first device's
certificate and measures how long the live session survives, sees the link disable the
device in the hub, and checks that a reconnect is refused.  Nothing is simulated
but the device's sensor readings.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fleetpki.application import FleetPKI, init_home
from fleetpki.errors import FleetPKIError
from fleetpki.pki.keys import KeySpec
from fleetpki.services import Actor
from fleetpki.settings import Settings

__all__ = ["STEPS", "DemoState", "Step", "run_demo"]

#: The enrollment agent the demo acts as (an Entra-style object id).
AGENT_ID = "6f1c0d3e-0000-4000-8000-00000000d3e0"
#: The demo's hub link: the built-in hub, reached as an Azure IoT Hub is.
DEMO_LINK = "demo-hub"
#: The demo's enrollment group (zero-touch provisioning of the issuing CA's devices).
DEMO_GROUP = "demo-devices"
_SESSION_CLOSE_TIMEOUT = 10.0


@dataclass
class DemoState:
    """What the steps share."""

    home: Path
    rng: random.Random = field(default_factory=random.Random)
    app: FleetPKI | None = None
    server: object | None = None
    api_url: str = ""
    ca_bundle: Path | None = None
    issuing_id: str = ""
    agent_token: str = ""
    identity: object | None = None
    client: object | None = None

    def fleet(self) -> FleetPKI:
        """The opened fleetpki instance."""
        if self.app is None:
            raise FleetPKIError("demo.order", "the CA hierarchy has not been created")
        return self.app


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the story: a title and the work, which returns a one-line result."""

    title: str
    run: Callable[[DemoState, Console], str]


def _create_ca(state: DemoState, _console: Console) -> str:
    from fleetpki.api.background import free_port

    api_port, mqtt_port = free_port(), free_port()
    settings = Settings.default_for(state.home).with_changes(
        public_url=f"https://127.0.0.1:{api_port}",
        api_port=api_port,
        mqtt_port=mqtt_port,
        # AMQP on a free port too: 5671 may be taken by a real server on this machine.
        amqp_port=free_port(),
        # The hub link below gets its Azure tokens here (off by default elsewhere).
        token_endpoint_enabled=True,
        # Outside the home, as `fleetpki init` keeps it, and removed with the demo.
        key_passphrase_file=str(state.home.parent / "demo.key-passphrase"),
    )
    result = init_home(settings)
    state.app, state.issuing_id = result.app, result.issuing.id
    state.api_url = settings.public_url
    return (
        f"root {result.root.key_spec}, issuing {result.issuing.key_spec}, "
        f"template max {result.template.max_validity_days} days; CA keys under scrypt, "
        f"passphrase outside the home in {result.passphrase.source.describe()}"
    )


def _start_servers(state: DemoState, _console: Console) -> str:
    from fleetpki.api.background import ServerThread

    fleet = state.fleet()
    server = ServerThread(fleet)
    server.start()
    state.server = server
    assert server.prepared is not None
    state.ca_bundle = server.prepared.tls.ca_bundle
    return f"CA API {state.api_url}, hub mqtts://localhost:{fleet.settings.mqtt_port}"


def _trust(state: DemoState, _console: Console) -> str:
    from fleetpki.services.context import LOCAL_ADMIN_ID
    from fleetpki.services.hub_links import link_command

    fleet, admin = state.fleet(), Actor.local_admin()
    identity = fleet.hub_management.show()
    # The client secret of the link's credential: an API token of the local admin,
    # exchanged at the hub's token endpoint as Entra ID's would be.
    secret = fleet.principals.create_token(admin, LOCAL_ADMIN_ID, name="demo hub link").secret
    assert state.ca_bundle is not None
    fleet.hub_links.add(
        admin,
        link_command(
            DEMO_LINK,
            "azure",
            ca_ids=[state.issuing_id],
            subscription_id=identity.subscription_id,
            resource_group=identity.resource_group,
            hub_name=identity.hub_name,
            management_url=state.api_url,
            service_url=state.api_url,
            ca_bundle=str(state.ca_bundle),
            credential="client-secret",
            tenant_id=identity.tenant_id,
            client_id=LOCAL_ADMIN_ID,
            authority_host=state.api_url,
            secret=secret,
        ),
    )
    trusted = fleet.hub_links.trust(admin, DEMO_LINK, state.issuing_id)
    if not trusted.verified:
        raise FleetPKIError("demo.not_verified", "the hub did not verify the CA")
    return (
        f"link {DEMO_LINK} through Azure's APIs: issuing CA uploaded as "
        f"{trusted.certificate_name} ({trusted.thumbprint[:12]}…), code signed by its key, "
        "verified"
    )


def _agent(state: DemoState, _console: Console) -> str:
    fleet = state.fleet()
    fleet.principals.add(Actor.local_admin(), AGENT_ID, "demo enrollment agent")
    state.agent_token = fleet.principals.create_token(
        Actor.local_admin(), AGENT_ID, name="demo"
    ).secret
    return f"principal {AGENT_ID} with an API token (stored hashed)"


def _simulate(state: DemoState, console: Console) -> str:
    from fleetpki.device import ServiceApiRegistry, SimulatorSettings, simulate_device

    fleet = state.fleet()
    # The hub's default policies are created on first use; the device registers
    # itself through the service API with this one, as the tutorial's does.
    conn = fleet.hub_sas.connection_string(
        "registryReadWrite", hostname=f"localhost:{fleet.settings.api_port}"
    )
    assert state.ca_bundle is not None
    settings = SimulatorSettings(
        server_url=state.api_url,
        token=state.agent_token,
        hub_host="localhost",
        verify=state.ca_bundle,
        mqtt_port=fleet.settings.mqtt_port,
        connect_host="127.0.0.1",
        messages=5,
        key_spec=KeySpec.RSA_4096,
        validity_days=10,
    )

    def report(step: str, detail: str) -> None:
        console.print(f"    [dim]{step}: {detail}[/dim]", highlight=False)

    registry = ServiceApiRegistry(conn, service_url=state.api_url, verify=state.ca_bundle)
    try:
        result = simulate_device(settings, registry=registry, report=report, rng=state.rng)
    finally:
        registry.close()
    state.identity = result.identity
    return (
        f"device {result.identity.device_id}: RSA-4096, 10 days, {len(result.sent)} messages sent"
    )


def _show_telemetry(state: DemoState, console: Console) -> str:
    device_id = _device_id(state)
    rows = state.fleet().hub_messages.list_telemetry(device_id=device_id, limit=100)
    bodies = [json.loads(r.body) for r in rows]
    table = Table(
        "id",
        "enqueued (UTC)",
        "messageId",
        "temperature",
        "humidity",
        "temperatureAlert",
        box=None,
        padding=(0, 2),
    )
    for row, body in zip(rows, bodies, strict=True):
        table.add_row(
            str(row.id),
            row.enqueued_at.strftime("%H:%M:%S.%f")[:-3],
            str(body.get("messageId")),
            str(body.get("temperature")),
            str(body.get("humidity")),
            str(row.properties.get("temperatureAlert")),
        )
    console.print(table)
    if len(bodies) != 5 or any(b["deviceId"] != device_id for b in bodies):
        raise FleetPKIError("demo.telemetry", f"expected 5 stored messages, found {len(bodies)}")
    return f"{len(rows)} messages stored durably before each PUBACK"


def _provision(state: DemoState, console: Console) -> str:
    from fleetpki.device import SimulatorSettings, simulate_device
    from fleetpki.services.provisioning_enrollments import EnrollmentKind, EnrollmentSpec

    fleet = state.fleet()
    # An enrollment group for the issuing CA (verified in the hub by the trust step):
    # any certificate it issued may register, and gets this initial twin.
    fleet.provisioning_enrollments.add(
        Actor.local_admin(),
        EnrollmentSpec(
            EnrollmentKind.GROUP,
            DEMO_GROUP,
            ca=state.issuing_id,
            initial_twin={"tags": {"onboarding": "zero-touch"}},
        ),
    )
    assert state.ca_bundle is not None
    scope = fleet.provisioning.id_scope
    settings = SimulatorSettings(
        server_url=state.api_url,
        token=state.agent_token,
        hub_host="localhost",
        verify=state.ca_bundle,
        mqtt_port=fleet.settings.mqtt_port,
        connect_host="127.0.0.1",
        messages=5,
        key_spec=KeySpec.EC_P256,
        validity_days=10,
        id_scope=scope,
    )

    def report(step: str, detail: str) -> None:
        console.print(f"    [dim]{step}: {detail}[/dim]", highlight=False)

    result = simulate_device(settings, registry=None, report=report, rng=state.rng)
    assignment = result.assignment
    device_id = result.identity.device_id
    stored = fleet.hub_messages.list_telemetry(device_id=device_id, limit=100)
    if assignment is None or len(stored) != 5:
        raise FleetPKIError("demo.provisioning", f"expected 5 stored messages of {device_id}")
    return (
        f"device {device_id}: never registered beforehand, provisioned through DPS "
        f"(ID scope {scope}, group {DEMO_GROUP}) to {assignment.assigned_hub}, "
        f"{len(stored)} messages stored"
    )


def _device_id(state: DemoState) -> str:
    from fleetpki.device import DeviceIdentity

    if not isinstance(state.identity, DeviceIdentity):
        raise FleetPKIError("demo.order", "no device yet")
    return state.identity.device_id


def _renew(state: DemoState, _console: Console) -> str:
    from fleetpki.device import DeviceClient, DeviceIdentity, EzcaEnroller, renew_identity

    assert isinstance(state.identity, DeviceIdentity)
    assert state.ca_bundle is not None
    old = state.identity
    with EzcaEnroller(state.api_url, state.agent_token, verify=state.ca_bundle) as enroller:
        new = renew_identity(enroller, old)
    state.identity = new
    client = DeviceClient(
        new,
        "localhost",
        port=state.fleet().settings.mqtt_port,
        connect_host="127.0.0.1",
        ca_bundle=state.ca_bundle,
    )
    client.connect()
    client.send_telemetry({"deviceId": new.device_id, "messageId": 6, "renewed": True})
    state.client = client
    return (
        f"serial {new.serial_hex[:12]}… replaces {old.serial_hex[:12]}…; "
        "reconnected, sent 1 message"
    )


def _rollover(state: DemoState, _console: Console) -> str:
    from fleetpki.device import DeviceClient, DeviceIdentity, EzcaEnroller, renew_identity
    from fleetpki.services.ca_lifecycle import RenewCommand

    assert isinstance(state.identity, DeviceIdentity)
    assert isinstance(state.client, DeviceClient)
    assert state.ca_bundle is not None
    fleet, admin = state.fleet(), Actor.local_admin()
    generation = fleet.ca_lifecycle.renew(admin, state.issuing_id, RenewCommand(rekey=True))
    started = time.perf_counter()
    while fleet.ca_lifecycle.generations(state.issuing_id)[-1].state != "active":
        if time.perf_counter() - started > _SESSION_CLOSE_TIMEOUT:
            raise FleetPKIError("demo.not_activated", "the hub link did not take the new CA")
        time.sleep(0.01)
    in_hub = len(fleet.hub_trust.list())
    # The device renews onto the new generation's chain with no configuration.
    with EzcaEnroller(state.api_url, state.agent_token, verify=state.ca_bundle) as enroller:
        new = renew_identity(enroller, state.identity)
    state.client.close()
    state.identity = new
    client = DeviceClient(
        new,
        "localhost",
        port=fleet.settings.mqtt_port,
        connect_host="127.0.0.1",
        ca_bundle=state.ca_bundle,
    )
    client.connect()
    client.send_telemetry({"deviceId": new.device_id, "messageId": 7, "newCA": True})
    state.client = client
    # The old generation stays trusted while anything it signed is outstanding: here the
    # server's own TLS certificate, which renews on its own schedule.
    retired = fleet.ca_lifecycle.retire_drained()
    states = {g.number: g.state for g in fleet.ca_lifecycle.generations(state.issuing_id)}
    if retired or states.get(generation.number - 1) != "retiring":
        raise FleetPKIError("demo.retired_early", f"unexpected generation states {states}")
    return (
        f"generation {generation.number} with a new key, active once the hub link held it "
        f"({in_hub} CA certificates in the hub); the device renewed onto it and reconnected; "
        f"generation {generation.number - 1} stays trusted, retiring, until what it signed "
        "(the servers' TLS certificate) expires or renews"
    )


def _retire(state: DemoState, _console: Console) -> str:
    from fleetpki.api.background import ServerThread
    from fleetpki.device import DeviceClient, DeviceIdentity

    assert isinstance(state.server, ServerThread)
    assert isinstance(state.identity, DeviceIdentity)
    assert isinstance(state.client, DeviceClient)
    fleet = state.fleet()
    before = len(fleet.hub_trust.list())
    # What the servers do every minute: their TLS certificate follows the new generation
    # (reissued, loaded into the live ports), so the old generation has nothing left.
    if not state.server.refresh_tls():
        raise FleetPKIError("demo.tls_not_renewed", "the server kept its old certificate")
    retired = fleet.ca_lifecycle.retire_drained()
    states = {g.number: g.state for g in fleet.ca_lifecycle.generations(state.issuing_id)}
    old = max(states) - 1
    if [g.number for g in retired] != [old] or states[old] != "retired":
        raise FleetPKIError("demo.not_retired", f"unexpected generation states {states}")
    after = len(fleet.hub_trust.list())
    if after != before - 1:
        raise FleetPKIError("demo.still_trusted", f"{after} CA certificates in the hub")
    # The device, on the new chain, reconnects as before.
    state.client.close()
    client = DeviceClient(
        state.identity,
        "localhost",
        port=fleet.settings.mqtt_port,
        connect_host="127.0.0.1",
        ca_bundle=state.ca_bundle,
    )
    client.connect()
    client.send_telemetry({"deviceId": state.identity.device_id, "messageId": 8})
    state.client = client
    return (
        f"the servers' TLS certificate moved to generation {old + 1}; generation {old} had "
        f"nothing outstanding and was retired: {before} -> {after} CA certificates in the hub; "
        "the device reconnected"
    )


def _revoke(state: DemoState, _console: Console) -> str:
    from fleetpki.client import Client
    from fleetpki.device import DeviceClient, DeviceIdentity

    assert isinstance(state.identity, DeviceIdentity)
    assert isinstance(state.client, DeviceClient)
    assert state.ca_bundle is not None
    if not state.client.is_connected:
        raise FleetPKIError("demo.not_connected", "the device is not connected before the revoke")
    with Client(state.api_url, state.agent_token, verify=state.ca_bundle) as api:
        called = time.perf_counter()
        api.revoke_certificate(state.identity.serial_hex, "keyCompromise")
        returned = time.perf_counter()
    closed_before_return = not state.client.is_connected
    while state.client.is_connected and time.perf_counter() - returned < _SESSION_CLOSE_TIMEOUT:
        time.sleep(0.0005)
    if state.client.is_connected:
        raise FleetPKIError("demo.session_open", "the live session was not closed")
    if closed_before_return:
        return (
            "keyCompromise through /v1; the hub closed the live session before the call "
            f"returned ({(returned - called) * 1000:.1f} ms round trip)"
        )
    return (
        "keyCompromise through /v1; the hub closed the live session "
        f"{(time.perf_counter() - returned) * 1000:.1f} ms after the call returned"
    )


def _disabled(state: DemoState, _console: Console) -> str:
    from fleetpki.device import DeviceIdentity
    from fleetpki.hub.policy import DeviceStatus

    assert isinstance(state.identity, DeviceIdentity)
    fleet, device_id = state.fleet(), state.identity.device_id
    started = time.perf_counter()
    while fleet.hub_devices.get(device_id).status != DeviceStatus.DISABLED.value:
        if time.perf_counter() - started > _SESSION_CLOSE_TIMEOUT:
            [status] = fleet.hub_links.status(Actor.local_admin(), DEMO_LINK)
            raise FleetPKIError(
                "demo.not_disabled",
                f"the link did not disable {device_id}: {status.backlog.last_error or 'pending'}",
            )
        time.sleep(0.01)
    device = fleet.hub_devices.get(device_id)
    return (
        f"link {DEMO_LINK} disabled {device_id} in the hub "
        f"({device.status_reason or 'revoked'}), {(time.perf_counter() - started) * 1000:.0f} ms "
        "after the session closed"
    )


def _refused(state: DemoState, _console: Console) -> str:
    from fleetpki.device import DeviceClient

    assert isinstance(state.client, DeviceClient)
    client = state.client
    try:
        client.reconnect()
    except FleetPKIError as exc:
        if exc.code != "hub.refused":
            raise
        return f"CONNACK {client.refused_code}: the revoked certificate is refused"
    raise FleetPKIError("demo.not_refused", "the hub accepted a revoked certificate")


STEPS = [
    Step("create the CA hierarchy", _create_ca),
    Step("start the CA API and the hub", _start_servers),
    Step("link the hub and trust the CA (one-click trust)", _trust),
    Step("create an enrollment agent", _agent),
    Step("simulate the tutorial's device", _simulate),
    Step("show the telemetry the hub stored", _show_telemetry),
    Step("renew with the current certificate and reconnect", _renew),
    Step("renew the issuing CA with a new key (hubs first)", _rollover),
    Step("retire the old CA generation from the hub", _retire),
    Step("provision another device through DPS (zero-touch)", _provision),
    Step("revoke: the live session closes", _revoke),
    Step("the hub link disables the device", _disabled),
    Step("reconnect with the revoked certificate", _refused),
]


def _cleanup(state: DemoState) -> None:
    from fleetpki.api.background import ServerThread
    from fleetpki.device import DeviceClient

    if isinstance(state.client, DeviceClient):
        state.client.close()
    if isinstance(state.server, ServerThread):
        state.server.stop()
    if state.app is not None:
        state.app.close()


def run_demo(console: Console | None = None, home: Path | None = None) -> int:
    """Run every step; print a table of steps, results and timings; return an exit status."""
    console = console or Console()
    results: list[tuple[str, str, float, bool]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fleetpki-demo-") as scratch:
        state = DemoState(home=home or Path(scratch) / "home")
        try:
            for number, step in enumerate(STEPS, 1):
                console.print(f"[bold]{number}. {step.title}[/bold]")
                begin = time.perf_counter()
                try:
                    with console.status(f"{step.title}…"):
                        outcome, ok = step.run(state, console), True
                except (FleetPKIError, OSError, AssertionError) as exc:
                    outcome, ok = f"FAILED: {exc}", False
                elapsed = time.perf_counter() - begin
                results.append((step.title, outcome, elapsed, ok))
                mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
                console.print(
                    f"  {mark} {outcome} [dim]({elapsed * 1000:.0f} ms)[/dim]", highlight=False
                )
                if not ok:
                    break
        finally:
            _cleanup(state)
    total = time.perf_counter() - started
    table = Table(title=f"fleetpki demo, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z, {total:.1f} s")
    table.add_column("step")
    table.add_column("result")
    table.add_column("time", justify="right")
    for title, outcome, elapsed, ok in results:
        table.add_row(title, outcome if ok else f"[red]{outcome}[/red]", f"{elapsed * 1000:.0f} ms")
    console.print(table)
    return 0 if len(results) == len(STEPS) and all(ok for *_, ok in results) else 1
