"""``fleetpki hub``: the built-in hub's registry, CA trust and service connection strings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from fleetpki.services import FleetPKI
from fleetpki.services.hub_registry import DeviceSpec, DeviceStatus

__all__ = ["hub_app"]

hub_app = typer.Typer(help="The built-in IoT hub: devices, CA trust, connection strings.")
device_app = typer.Typer(help="Devices in the hub's registry.", no_args_is_help=True)
hub_app.add_typer(device_app, name="device")

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

DeviceId = Annotated[str, typer.Argument(help="The device id (its certificate CN).")]


@contextmanager
def _opened() -> Iterator[FleetPKI]:
    # The home comes from the root command's --home option, kept by cli.main.
    from fleetpki.cli.main import _opened as opened_home

    with opened_home() as instance:
        yield instance


def _when(value: object) -> str:
    return "" if value is None else str(value)


@device_app.command("add")
def device_add(device_id: DeviceId) -> None:
    """Register a device that authenticates with a certificate from a trusted CA."""
    with _opened() as inst:
        record, _ = inst.hub_devices.put(DeviceSpec(device_id))
    err_console.print(f"device {record.device_id} added (certificateAuthority, enabled)")


@device_app.command("list")
def device_list() -> None:
    """List registered devices."""
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("device id", "status", "auth", "connection", "c2d pending"):
        table.add_column(column, overflow="fold")
    with _opened() as inst:
        for device in inst.hub_devices.list():
            table.add_row(
                device.device_id,
                device.status,
                device.auth_type,
                device.connection_state,
                str(device.c2d_count),
            )
    console.print(table)


@device_app.command("show")
def device_show(device_id: DeviceId) -> None:
    """Show a device and its twin."""
    from fleetpki.api.hub_service import twin_json

    with _opened() as inst:
        document = twin_json(inst.hub_twins.get(device_id))
    console.print_json(data=document)


def _set_status(device_id: str, status: DeviceStatus, reason: str | None) -> None:
    with _opened() as inst:
        inst.hub_devices.set_status(device_id, status, reason=reason)
    err_console.print(f"device {device_id} {status.value}")


@device_app.command("disable")
def device_disable(
    device_id: DeviceId,
    reason: Annotated[str | None, typer.Option(help="Why (shown as statusReason).")] = None,
) -> None:
    """Disable a device: it is refused from now on and a live session is closed."""
    _set_status(device_id, DeviceStatus.DISABLED, reason)


@device_app.command("enable")
def device_enable(device_id: DeviceId) -> None:
    """Enable a device again."""
    _set_status(device_id, DeviceStatus.ENABLED, None)


@device_app.command("delete")
def device_delete(device_id: DeviceId) -> None:
    """Remove a device from the registry (and its queued messages)."""
    with _opened() as inst:
        inst.hub_devices.delete(device_id)
    err_console.print(f"device {device_id} deleted")


@hub_app.command("trust")
def trust(ca_id: Annotated[str, typer.Argument(help="The id of a fleetpki CA.")]) -> None:
    """Trust a local CA in the hub, proving possession of its key (Azure's verification flow)."""
    with _opened() as inst:
        record = inst.hub_trust.trust_local_ca(ca_id)
    err_console.print(f"hub trusts {record.name} ({record.sha1_hex}), verified")


@hub_app.command("connection-string")
def connection_string(
    policy: Annotated[
        str, typer.Option(help="iothubowner, service, registryRead or registryReadWrite.")
    ] = "iothubowner",
    hostname: Annotated[
        str | None, typer.Option(help="HostName to print (default: the hub hostname:API port).")
    ] = None,
) -> None:
    """Print a service connection string for the Azure IoT Hub SDKs."""
    with _opened() as inst:
        text = inst.hub_sas.connection_string(policy, hostname)
    typer.echo(text)


def _remote_client() -> object | None:
    from fleetpki.cli.main import _client

    return _client()


def _print_message(message: dict[str, object]) -> None:
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


@hub_app.command("monitor")
def monitor(
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
    import time

    from fleetpki.api.hub_v1 import message_out
    from fleetpki.client import Client

    client = _remote_client()
    deadline = None if timeout is None else time.monotonic() + timeout

    def fetch(after: int | None, limit: int) -> list[dict[str, object]]:
        if isinstance(client, Client):
            return client.hub_messages(device=device, after=after, limit=limit)
        with _opened() as inst:
            rows = inst.hub_messages.list_telemetry(device_id=device, after_id=after, limit=limit)
            return [message_out(r).model_dump() for r in rows]

    # The newest `last` messages first: page through to the end, keep the tail.
    backlog: list[dict[str, object]] = []
    after: int | None = None
    while True:
        page = fetch(after, 1000)
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
            page = fetch(after, 500)
            for message in page:
                _print_message(message)
                after = int(str(message["id"]))
            if not page:
                time.sleep(0.25)
    except KeyboardInterrupt:
        return


@hub_app.command("send")
def send(
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
    from fleetpki.client import Client
    from fleetpki.errors import ValidationError

    properties: dict[str, str] = {}
    for item in prop or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationError("cli.bad_property", f"bad property {item!r}: use key=value")
        properties[key] = value
    client = _remote_client()
    if isinstance(client, Client):
        answer = client.send_c2d(device_id, text, properties=properties)
        console.print(f"queued {answer['messageId']} for {device_id}")
        return
    with _opened() as inst:
        message = inst.hub_messages.enqueue_c2d(device_id, text.encode(), properties=properties)
    console.print(f"queued {message.message_id} for {device_id}")
