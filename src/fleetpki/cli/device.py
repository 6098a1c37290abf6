"""``fleetpki device``: the tutorial's device simulator against a running fleetpki server."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleetpki.device.mqtt_transport import DEFAULT_MQTT_PORT
from fleetpki.device.registry import HubRegistry, ServiceApiRegistry
from fleetpki.device.simulator import (
    DEFAULT_MESSAGES,
    DEFAULT_VALIDITY_DAYS,
    TEMPERATURE_ALERT_ABOVE,
    SimulationResult,
    SimulatorSettings,
    simulate_device,
)
from fleetpki.errors import FleetPKIError
from fleetpki.pki.keys import KeySpec

__all__ = ["app", "simulate"]

app = typer.Typer(help="Devices: the tutorial's simulator.", no_args_is_help=True)

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _key_spec(text: str) -> KeySpec:
    try:
        return KeySpec.parse(text)
    except FleetPKIError as exc:
        raise typer.BadParameter(exc.message) from None


@app.command()
def simulate(
    count: Annotated[int, typer.Option("--count", min=1, help="How many devices.")] = 1,
    messages: Annotated[
        int, typer.Option("--messages", min=0, help="Telemetry messages per device.")
    ] = DEFAULT_MESSAGES,
    key: Annotated[
        str, typer.Option("--key", help="Device key: rsa-2048/3072/4096, ec-p256, ec-p384.")
    ] = KeySpec.RSA_4096.value,
    validity_days: Annotated[
        int, typer.Option("--validity-days", min=1, help="Certificate lifetime.")
    ] = DEFAULT_VALIDITY_DAYS,
    server: Annotated[
        str,
        typer.Option(
            "--server", envvar="FLEETPKI_SERVER", help="The fleetpki server (EZCA API) URL."
        ),
    ] = "https://localhost:8443",
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="FLEETPKI_TOKEN", help="API token (bearer).", show_default=False
        ),
    ] = None,
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            "--ca-bundle", envvar="FLEETPKI_CA_BUNDLE", help="CA bundle to trust for --server."
        ),
    ] = None,
    hub_host: Annotated[
        str | None,
        typer.Option("--hub-host", help="The hub's host name (default: the server's host)."),
    ] = None,
    mqtt_port: Annotated[
        int, typer.Option("--mqtt-port", help="The hub's MQTT/TLS port.")
    ] = DEFAULT_MQTT_PORT,
    hub_ca_bundle: Annotated[
        Path | None,
        typer.Option(
            "--hub-ca-bundle", help="CA bundle for the hub's TLS (default: the CA's root)."
        ),
    ] = None,
    hub_connection_string: Annotated[
        str | None,
        typer.Option(
            "--hub-connection-string",
            envvar="FLEETPKI_HUB_CONNECTION_STRING",
            help="The hub's service connection string, to register devices.",
            show_default=False,
        ),
    ] = None,
    hub_service_url: Annotated[
        str | None,
        typer.Option(
            "--hub-service-url", help="The hub's service REST base (default https://HostName)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Keep each device's key and certificate in OUT/<device id>."),
    ] = None,
    provision: Annotated[
        bool,
        typer.Option(
            "--provision",
            help="Zero-touch: no hub registration; the device asks the provisioning service "
            "(DPS, on the hub's host and port) where to connect.",
        ),
    ] = False,
    id_scope: Annotated[
        str | None,
        typer.Option(
            "--id-scope",
            envvar="FLEETPKI_ID_SCOPE",
            help="The provisioning service's ID scope (fleetpki hub provisioning show).",
        ),
    ] = None,
) -> None:
    """Enroll new devices through the EZCA API and send telemetry, as the tutorial does.

    With ``--provision`` it is the tutorial's provisioning sibling: nothing registers
    the device in the hub; it provisions itself through DPS, then connects.
    """
    if not token:
        err_console.print("error: cli.token_required: use --token or set FLEETPKI_TOKEN")
        raise typer.Exit(1)
    if provision and not id_scope:
        err_console.print("error: cli.id_scope_required: --provision needs --id-scope")
        raise typer.Exit(1)
    spec = _key_spec(key)
    host = hub_host or urlsplit(server).hostname or "localhost"
    settings = SimulatorSettings(
        server_url=server,
        token=token,
        hub_host=host,
        verify=ca_bundle if ca_bundle is not None else True,
        hub_ca_bundle=hub_ca_bundle,
        mqtt_port=mqtt_port,
        messages=messages,
        key_spec=spec,
        validity_days=validity_days,
        directory=out,
        id_scope=id_scope if provision else None,
    )
    results: list[SimulationResult] = []
    with contextlib.ExitStack() as stack:
        registry: HubRegistry | None = None
        if hub_connection_string and not provision:
            registry = stack.enter_context(
                ServiceApiRegistry(
                    hub_connection_string,
                    service_url=hub_service_url,
                    verify=ca_bundle if ca_bundle is not None else True,
                )
            )
        progress = stack.enter_context(
            Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
        )
        steps = 6 + messages + (1 if provision else 0)
        for number in range(1, count + 1):
            label = f"device {number}/{count}"
            task = progress.add_task(label, total=steps)

            def report(step: str, detail: str, task_id: TaskID = task, label: str = label) -> None:
                progress.console.print(f"  [bold]{escape(step)}[/bold]: {escape(detail)}")
                progress.update(task_id, advance=1, description=f"{label}: {step}")

            try:
                results.append(simulate_device(settings, registry=registry, report=report))
            except FleetPKIError as exc:
                progress.stop()
                err_console.print(f"error: {exc.code}: {exc.message}")
                raise typer.Exit(1) from None
            progress.update(task, completed=steps, description=f"{label}: done")
    _summary(results)


def _summary(results: list[SimulationResult]) -> None:
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("device id", "serial", "not after", "messages", "alerts"):
        table.add_column(column, overflow="fold")
    for result in results:
        alerts = sum(1 for body in result.sent if body["temperature"] > TEMPERATURE_ALERT_ABOVE)
        table.add_row(
            result.identity.device_id,
            result.identity.serial_hex,
            f"{result.identity.not_after:%Y-%m-%d %H:%M}Z",
            str(len(result.sent)),
            str(alerts),
        )
    console.print(table)
    sys.stdout.flush()
