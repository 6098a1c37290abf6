"""``fleetpki hub``: the built-in hub's identity, registry, CA trust, telemetry; hub links."""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from fleetpki.application import FleetPKI
from fleetpki.cli import hub_link, hub_provisioning
from fleetpki.cli.context import CliContext, cli_context
from fleetpki.cli.output import (
    Output,
    OutputOption,
    console,
    err_console,
    print_fields,
    print_json,
    print_table,
    table,
)
from fleetpki.client import Client
from fleetpki.errors import ValidationError
from fleetpki.hub.policy import AuthType, DeviceStatus
from fleetpki.services.hub_devices import DeviceSpec

__all__ = ["app"]

app = typer.Typer(help="The built-in IoT hub: devices, CA trust, connection strings.")
device_app = typer.Typer(help="Devices in the hub's registry.", no_args_is_help=True)
app.add_typer(device_app, name="device")
app.add_typer(hub_link.app, name="link")
app.add_typer(hub_provisioning.provisioning_app, name="provisioning")
app.add_typer(hub_provisioning.group_app, name="enrollment-group")
app.add_typer(hub_provisioning.enrollment_app, name="enrollment")

DeviceId = Annotated[str, typer.Argument(help="The device id (its certificate CN).")]


# --------------------------------------------------------------------------- the registry
# The hub's service API (Azure's shapes) has these routes, but it authenticates with
# SAS connection strings, not fleetpki tokens, so these commands act on the local home.


def _add_device(fleet: FleetPKI, spec: DeviceSpec) -> str:
    device, _ = fleet.hub_devices.put(spec)
    return device.device_id


def _device_connection_string(
    fleet: FleetPKI, device_id: str, hostname: str, secondary: bool
) -> str:
    return fleet.hub_devices.connection_string(device_id, hostname, secondary=secondary)


def _list_devices(fleet: FleetPKI) -> list[dict[str, Any]]:
    from fleetpki.api.hub_service import device_json

    return [device_json(d) for d in fleet.hub_devices.list()]


def _device_twin(fleet: FleetPKI, device_id: str) -> dict[str, Any]:
    from fleetpki.api.hub_service import twin_json

    return twin_json(fleet.hub_twins.get(device_id))


def _set_status(fleet: FleetPKI, device_id: str, status: DeviceStatus, reason: str | None) -> None:
    fleet.hub_devices.set_status(device_id, status, reason=reason)


def _delete_device(fleet: FleetPKI, device_id: str) -> None:
    fleet.hub_devices.delete(device_id)


class AuthChoice(enum.StrEnum):
    """How a device authenticates, as ``--auth`` names it."""

    CA = "ca"
    SELF_SIGNED = "self-signed"
    SAS = "sas"


_AUTH_TYPES = {
    AuthChoice.CA: AuthType.CERTIFICATE_AUTHORITY,
    AuthChoice.SELF_SIGNED: AuthType.SELF_SIGNED,
    AuthChoice.SAS: AuthType.SAS,
}


@device_app.command("add")
def device_add(
    ctx: typer.Context,
    device_id: DeviceId,
    auth: Annotated[
        AuthChoice,
        typer.Option(
            help="ca: a certificate from a trusted CA (CN = device id); self-signed: a "
            "certificate pinned by --thumbprint; sas: symmetric keys (Azure's default)."
        ),
    ] = AuthChoice.CA,
    thumbprint: Annotated[
        list[str] | None,
        typer.Option(help="For self-signed: the SHA-1 or SHA-256 thumbprint (twice: both)."),
    ] = None,
    primary_key: Annotated[
        str | None, typer.Option(help="For sas: the primary key (base64); generated if absent.")
    ] = None,
    secondary_key: Annotated[
        str | None, typer.Option(help="For sas: the secondary key; generated if absent.")
    ] = None,
) -> None:
    """Register a device; ``hub device connection-string ID`` prints a sas device's string."""
    thumbprints = list(thumbprint or [])
    if len(thumbprints) > 2:
        raise ValidationError("cli.too_many_thumbprints", "give at most two --thumbprint")
    spec = DeviceSpec(
        device_id,
        auth_type=_AUTH_TYPES[auth],
        primary_thumbprint=thumbprints[0] if thumbprints else None,
        secondary_thumbprint=thumbprints[1] if len(thumbprints) > 1 else None,
        primary_key=primary_key,
        secondary_key=secondary_key,
    )
    added = _add_device(cli_context(ctx).fleet("hub device add"), spec)
    err_console.print(f"device {added} added ({spec.auth_type.value}, enabled)")


@device_app.command("connection-string")
def device_connection_string(
    ctx: typer.Context,
    device_id: DeviceId,
    secondary: Annotated[bool, typer.Option("--secondary", help="With the secondary key.")] = False,
    hostname: Annotated[
        str | None,
        typer.Option(help="HostName to print (default: the hub's hostname; no port)."),
    ] = None,
) -> None:
    """Print a sas device's connection string, for ``create_from_connection_string``.

    The device SDK dials HostName on port 8883 (MQTT) or 443 (WebSockets) and takes no
    port, so the hub must listen there (``fleetpki serve --mqtt-port 8883``).
    """
    fleet = cli_context(ctx).fleet("hub device connection-string")
    text = _device_connection_string(
        fleet, device_id, hostname or fleet.settings.hostname, secondary
    )
    typer.echo(text)


@device_app.command("list")
def device_list(ctx: typer.Context, output: OutputOption = Output.TABLE) -> None:
    """List registered devices (``-o json``: Azure's Device shape, as ``GET /devices``)."""
    devices = _list_devices(cli_context(ctx).fleet("hub device list"))
    if output is Output.JSON:
        print_json(devices)
        return
    rows = table("device id", "status", "auth", "connection", "c2d pending", "thumbprint")
    for d in devices:
        rows.add_row(
            d["deviceId"],
            d["status"],
            d["authentication"]["type"],
            d["connectionState"],
            str(d["cloudToDeviceMessageCount"]),
            d["authentication"]["x509Thumbprint"]["primaryThumbprint"] or "",
        )
    print_table(rows)


@device_app.command("show")
def device_show(
    ctx: typer.Context, device_id: DeviceId, output: OutputOption = Output.TABLE
) -> None:
    """Show a device and its twin (``-o json``: Azure's Twin shape, as ``GET /twins/{id}``)."""
    twin = _device_twin(cli_context(ctx).fleet("hub device show"), device_id)
    if output is Output.JSON:
        print_json(twin)
        return
    thumbprints = twin["x509Thumbprint"]
    print_fields(
        [
            ("device id", twin["deviceId"]),
            (
                "status",
                twin["status"] + (f" ({twin['statusReason']})" if twin["statusReason"] else ""),
            ),
            ("auth", twin["authenticationType"]),
            ("connection", twin["connectionState"]),
            ("last activity", twin["lastActivityTime"]),
            ("c2d pending", twin["cloudToDeviceMessageCount"]),
            ("thumbprint", thumbprints["primaryThumbprint"] or "-"),
            ("secondary", thumbprints["secondaryThumbprint"] or "-"),
            ("tags", twin["tags"]),
            ("desired", twin["properties"]["desired"]),
            ("reported", twin["properties"]["reported"]),
        ]
    )


@device_app.command("disable")
def device_disable(
    ctx: typer.Context,
    device_id: DeviceId,
    reason: Annotated[str | None, typer.Option(help="Why (shown as statusReason).")] = None,
) -> None:
    """Disable a device: it is refused from now on and a live session is closed."""
    _set_status(
        cli_context(ctx).fleet("hub device disable"), device_id, DeviceStatus.DISABLED, reason
    )
    err_console.print(f"device {device_id} {DeviceStatus.DISABLED.value}")


@device_app.command("enable")
def device_enable(ctx: typer.Context, device_id: DeviceId) -> None:
    """Enable a device again."""
    _set_status(cli_context(ctx).fleet("hub device enable"), device_id, DeviceStatus.ENABLED, None)
    err_console.print(f"device {device_id} {DeviceStatus.ENABLED.value}")


@device_app.command("delete")
def device_delete(ctx: typer.Context, device_id: DeviceId) -> None:
    """Remove a device from the registry (and its queued messages)."""
    _delete_device(cli_context(ctx).fleet("hub device delete"), device_id)
    err_console.print(f"device {device_id} deleted")


# --------------------------------------------------------------------------- the hub itself


def _identity(fleet: FleetPKI) -> dict[str, str | None]:
    identity = fleet.hub_management.show()
    url = fleet.settings.public_url.rstrip("/")
    return {
        "subscriptionId": identity.subscription_id,
        "resourceGroup": identity.resource_group,
        "hubName": identity.hub_name,
        "tenantId": identity.tenant_id,
        "hostName": identity.host_name,
        "resourceId": identity.resource_id,
        "managementUrl": url,
        # fleetpki's own token endpoint, for --authority-host, only when it is enabled.
        "authorityHost": url if fleet.settings.token_endpoint_enabled else None,
        # The service API is on the HTTPS API port, under the home's own CA.
        "serviceUrl": url,
        "caBundle": str(fleet.settings.home / "tls" / "ca-bundle.pem"),
    }


def _link_command(identity: dict[str, str | None]) -> str:
    """The ``hub link add`` another fleetpki runs to link this hub."""
    parts = [
        "fleetpki hub link add NAME --azure",
        f"--subscription {identity['subscriptionId']}",
        f"--resource-group {identity['resourceGroup']}",
        f"--hub {identity['hubName']}",
        f"--management-url {identity['managementUrl']}",
        f"--service-url {identity['serviceUrl']}",
        "--ca-bundle COPY-OF-" + Path(identity["caBundle"] or "ca-bundle.pem").name,
    ]
    if identity["authorityHost"]:
        parts += [
            f"--authority-host {identity['authorityHost']}",
            f"--credential client-secret --tenant {identity['tenantId']}",
            "--client-id PRINCIPAL-ID --secret-file FILE-WITH-ITS-API-TOKEN",
        ]
    else:
        parts.append("--credential connection-string --secret-file FILE-WITH-A-CONNECTION-STRING")
    return " \\\n    ".join(parts) + "\n"


@app.command("show")
def show(ctx: typer.Context, output: OutputOption = Output.TABLE) -> None:
    """Show the built-in hub as Azure's management plane names it.

    Another fleetpki links this hub with ``hub link add NAME --azure --subscription S
    --resource-group RG --hub H --management-url URL`` using these values.
    """
    fleet = cli_context(ctx).fleet("hub show")
    identity = _identity(fleet)
    if output is Output.JSON:
        print_json(identity)
        return
    print_fields(
        [
            ("subscription", identity["subscriptionId"]),
            ("resource group", identity["resourceGroup"]),
            ("hub", identity["hubName"]),
            ("tenant", identity["tenantId"]),
            ("host name", identity["hostName"]),
            ("management URL", identity["managementUrl"]),
            ("authority host", identity["authorityHost"] or "- (token endpoint off)"),
            ("service URL", identity["serviceUrl"]),
            ("CA bundle", identity["caBundle"]),
            ("resource id", identity["resourceId"]),
        ]
    )
    console.print("\nlink this hub from another fleetpki with:", highlight=False)
    console.print(_link_command(identity), highlight=False, markup=False)
    if not identity["authorityHost"]:
        err_console.print(
            "[yellow]note[/yellow]: a connection string reaches the device registry only; "
            "for one-click trust from elsewhere, turn on the token endpoint "
            f"(token_endpoint_enabled = true in {fleet.settings.config_path}; "
            "docs/azure-management.md)",
            highlight=False,
        )


# --------------------------------------------------------------------------- trust, SAS


def _trust(fleet: FleetPKI, ca_id: str) -> tuple[str, str]:
    trusted = fleet.hub_trust.trust_local_ca(ca_id)
    return trusted.name, trusted.sha1_hex


def _connection_string(fleet: FleetPKI, policy: str, hostname: str | None) -> str:
    return fleet.hub_sas.connection_string(policy, hostname)


def _eventhub_connection_string(fleet: FleetPKI, policy: str, hostname: str | None) -> str:
    return fleet.hub_sas.eventhub_connection_string(
        policy, hostname or fleet.settings.hostname, fleet.hub_eventhub.name
    )


@app.command("trust")
def trust(
    ctx: typer.Context, ca_id: Annotated[str, typer.Argument(help="The id of a fleetpki CA.")]
) -> None:
    """Trust a local CA in the hub, proving possession of its key (Azure's verification flow)."""
    name, sha1 = _trust(cli_context(ctx).fleet("hub trust"), ca_id)
    err_console.print(f"hub trusts {name} ({sha1}), verified")


@app.command("connection-string")
def connection_string(
    ctx: typer.Context,
    policy: Annotated[
        str, typer.Option(help="iothubowner, service, registryRead or registryReadWrite.")
    ] = "iothubowner",
    hostname: Annotated[
        str | None, typer.Option(help="HostName to print (default: the hub hostname:API port).")
    ] = None,
    eventhub: Annotated[
        bool,
        typer.Option(
            "--eventhub",
            help="Print the Event Hubs-compatible endpoint's string (Endpoint=sb://...;"
            "EntityPath=...) for azure-eventhub's EventHubConsumerClient.",
        ),
    ] = False,
) -> None:
    """Print a service connection string for the Azure IoT Hub SDKs.

    With ``--eventhub``, the string of the built-in Event Hubs-compatible endpoint: AMQP
    on port 5671 of the hub's hostname (``amqp_port``), the Event Hub named after the hub.
    """
    fleet = cli_context(ctx).fleet("hub connection-string")
    if eventhub:
        text = _eventhub_connection_string(fleet, policy, hostname)
    else:
        text = _connection_string(fleet, policy, hostname)
    typer.echo(text)


# --------------------------------------------------------------------------- telemetry, C2D


def _messages(
    state: CliContext, client: Client | None, device: str | None, after: int | None, limit: int
) -> list[dict[str, Any]]:
    if client is not None:
        return client.hub_messages(device=device, after=after, limit=limit)
    from fleetpki.api.hub_v1 import message_out

    fleet = state.fleet("hub monitor")
    rows = fleet.hub_messages.list_telemetry(device_id=device, after_id=after, limit=limit)
    return [message_out(r).model_dump() for r in rows]


def _print_message(message: dict[str, Any]) -> None:
    console.print_json(
        data={
            "event": {
                "origin": message["deviceId"],
                "enqueuedTime": message["enqueuedTime"],
                "payload": message["body"],
                "properties": {
                    "system": message["systemProperties"],
                    "application": message["properties"],
                },
            }
        }
    )


@app.command("monitor")
def monitor(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option("--device", help="Only this device.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep waiting for new messages.")
    ] = True,
    last: Annotated[int, typer.Option(help="Show this many stored messages first.")] = 10,
    timeout: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: never).")
    ] = None,
) -> None:
    """Show telemetry as the hub stored it, live, like ``az iot hub monitor-events``."""
    state = cli_context(ctx)
    client = state.client()
    deadline = None if timeout is None else time.monotonic() + timeout
    # The newest `last` messages first: page through to the end, keep the tail.
    backlog: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        page = _messages(state, client, device, after, 1000)
        if not page:
            break
        backlog = (backlog + page)[-last:] if last else []
        after = int(str(page[-1]["id"]))
    for message in backlog:
        _print_message(message)
    if not follow:
        return
    err_console.print("[dim]waiting for telemetry; Ctrl+C to stop[/dim]")
    try:
        while deadline is None or time.monotonic() < deadline:
            page = _messages(state, client, device, after, 500)
            for message in page:
                _print_message(message)
                after = int(str(message["id"]))
            if not page:
                time.sleep(0.25)
    except KeyboardInterrupt:
        return


def _enqueue(fleet: FleetPKI, device_id: str, text: str, properties: dict[str, str]) -> str:
    message = fleet.hub_messages.enqueue_c2d(device_id, text.encode(), properties=properties)
    return message.message_id


@app.command("send")
def send(
    ctx: typer.Context,
    device_id: DeviceId,
    text: Annotated[str, typer.Argument(help="The message body.")],
    prop: Annotated[
        list[str] | None, typer.Option("--property", help="An application property k=v.")
    ] = None,
) -> None:
    """Send a cloud-to-device message; a connected device gets it at once, others on reconnect.

    Without ``--server`` the message is queued in the local database and delivered
    when the device next connects (or by a hub running in this process); with
    ``--server`` the running hub delivers it at once.
    """
    properties: dict[str, str] = {}
    for item in prop or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationError("cli.bad_property", f"bad property {item!r}: use key=value")
        properties[key] = value
    state = cli_context(ctx)
    if client := state.client():
        message_id = str(client.send_c2d(device_id, text, properties=properties)["messageId"])
    else:
        message_id = _enqueue(state.fleet("hub send"), device_id, text, properties)
    console.print(f"queued {message_id} for {device_id}")
