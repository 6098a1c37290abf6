"""``fleetpki hub provisioning|enrollment-group|enrollment``: the provisioning service (Azure DPS).

``provisioning show`` prints what a device needs (the ID scope and the endpoint); the
enrollment commands manage who may register and where each device is sent. They act on
the local home; the same enrollments are served under the HTTPS port in DPS's service
API shapes (``/enrollmentGroups``, ``/enrollments``, docs/provisioning.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fleetpki.cli.context import cli_context
from fleetpki.cli.inputs import read_file
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
from fleetpki.errors import ValidationError
from fleetpki.services import Actor
from fleetpki.services.provisioning_enrollments import (
    AllocationPolicy,
    EnrollmentKind,
    EnrollmentSpec,
    EnrollmentView,
    ReprovisionPolicy,
)
from fleetpki.services.provisioning_requests import ProvisioningView

__all__ = ["enrollment_app", "group_app", "provisioning_app"]

provisioning_app = typer.Typer(
    help="The provisioning service (Azure DPS): its ID scope and endpoints.",
    no_args_is_help=True,
)
group_app = typer.Typer(
    help="Enrollment groups: any certificate of a verified hub CA may register.",
    no_args_is_help=True,
)
enrollment_app = typer.Typer(
    help="Individual enrollments: one registration id and its certificate.",
    no_args_is_help=True,
)

GroupId = Annotated[str, typer.Argument(help="The enrollment group id.")]
RegistrationId = Annotated[str, typer.Argument(help="The registration id (the certificate CN).")]
HubOption = Annotated[
    list[str] | None,
    typer.Option(
        "--hub",
        help="A hub to send devices to: the built-in hub's host name or a hub link's name "
        "(repeat for several, with --allocation hashed). Default: the built-in hub.",
    ),
]
AllocationOption = Annotated[
    str | None,
    typer.Option(help="static (one hub) or hashed (evenly across --hub); default by count."),
]
TwinOption = Annotated[
    str | None,
    typer.Option(
        help='The initial twin as JSON, or @FILE: {"tags": {..}, "properties": {"desired": {..}}}.'
    ),
]
DisabledOption = Annotated[bool, typer.Option("--disabled", help="Create it disabled.")]
UpdateOption = Annotated[
    bool,
    typer.Option(
        "--update-hub-assignment/--keep-hub-assignment",
        help="Whether a device's next registration is allocated again (may move it).",
    ),
]
MigrateOption = Annotated[
    bool,
    typer.Option(
        "--migrate-device-data/--reset-device-data",
        help="Whether a device that moves keeps its twin, or is reset to the initial twin.",
    ),
]


def _twin(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    raw = read_file(Path(text[1:]), "initial twin").decode() if text.startswith("@") else text
    try:
        twin = json.loads(raw)
    except ValueError as exc:
        raise ValidationError("provisioning.bad_twin", "the initial twin is not JSON") from exc
    if not isinstance(twin, dict):
        raise ValidationError("provisioning.bad_twin", "the initial twin must be a JSON object")
    return twin


def _allocation(text: str | None, hubs: list[str]) -> AllocationPolicy:
    if text is None:
        return AllocationPolicy.HASHED if len(hubs) > 1 else AllocationPolicy.STATIC
    return AllocationPolicy.parse(text)


def _view_json(view: EnrollmentView) -> dict[str, Any]:
    from fleetpki.api.dps import enrollment_json

    return enrollment_json(view)


def _print_view(view: EnrollmentView, output: Output) -> None:
    if output is Output.JSON:
        print_json(_view_json(view))
        return
    attested = (
        ("hub CA", view.ca_name or "-")
        if view.kind is EnrollmentKind.GROUP
        else ("certificate", view.certificate_sha1 or "-")
    )
    print_fields(
        [
            ("group" if view.kind is EnrollmentKind.GROUP else "registration id", view.name),
            attested,
            ("status", "enabled" if view.enabled else "disabled"),
            ("allocation", view.allocation.value),
            ("hubs", ", ".join(view.hubs)),
            ("update hub", "yes" if view.reprovision.update_hub_assignment else "no"),
            ("migrate data", "yes" if view.reprovision.migrate_device_data else "no"),
            ("initial twin", json.dumps(view.initial_twin)),
            ("registrations", view.registrations),
            ("etag", view.etag),
        ]
    )


def _print_list(views: list[EnrollmentView], output: Output) -> None:
    if output is Output.JSON:
        print_json([_view_json(v) for v in views])
        return
    rows = table("name", "attested by", "status", "allocation", "hubs", "registrations")
    for v in views:
        rows.add_row(
            v.name,
            (v.ca_name if v.kind is EnrollmentKind.GROUP else v.certificate_sha1) or "-",
            "enabled" if v.enabled else "disabled",
            v.allocation.value,
            ", ".join(v.hubs),
            str(v.registrations),
        )
    print_table(rows)


# --------------------------------------------------------------------------- the service


def _show_json(view: ProvisioningView) -> dict[str, Any]:
    return {
        "idScope": view.id_scope,
        "globalDeviceEndpoint": view.endpoint,
        "mqttPort": view.mqtt_port,
        "httpsPort": view.api_port,
        "hubs": [{"hostName": h.host_name, "link": h.link} for h in view.hubs],
        "enrollmentGroups": view.groups,
        "individualEnrollments": view.individual_enrollments,
    }


@provisioning_app.command("show")
def provisioning_show(ctx: typer.Context, output: OutputOption = Output.TABLE) -> None:
    """Show the ID scope, where devices provision and the hubs enrollments may use."""
    view = cli_context(ctx).fleet("hub provisioning show").provisioning.show()
    if output is Output.JSON:
        print_json(_show_json(view))
        return
    print_fields(
        [
            ("ID scope", view.id_scope),
            ("endpoint", view.endpoint),
            (
                "MQTT",
                f"{view.endpoint}:{view.mqtt_port} (username {view.id_scope}/registrations/…)",
            ),
            (
                "HTTPS",
                f"https://{view.endpoint}:{view.api_port}/{view.id_scope}/registrations/"
                "{id}/register (and MQTT over WebSockets)",
            ),
            (
                "hubs",
                ", ".join(h.host_name + (f" (link {h.link})" if h.link else "") for h in view.hubs),
            ),
            ("enrollment groups", view.groups),
            ("individual", view.individual_enrollments),
        ]
    )
    console.print(
        "\na device provisions with: fleetpki device simulate --provision "
        f"--id-scope {view.id_scope} ...",
        highlight=False,
        markup=False,
    )


# --------------------------------------------------------------------------- groups


@group_app.command("add")
def group_add(
    ctx: typer.Context,
    group_id: GroupId,
    ca: Annotated[
        str,
        typer.Option(help="The verified hub CA that attests it: its hub name or fleetpki CA id."),
    ],
    hub: HubOption = None,
    allocation: AllocationOption = None,
    twin: TwinOption = None,
    disabled: DisabledOption = False,
    update_hub_assignment: UpdateOption = True,
    migrate_device_data: MigrateOption = True,
    output: OutputOption = Output.TABLE,
) -> None:
    """Add an enrollment group: devices whose certificate chains to CA may register."""
    hubs = list(hub or [])
    spec = EnrollmentSpec(
        EnrollmentKind.GROUP,
        group_id,
        ca=ca,
        allocation=_allocation(allocation, hubs),
        hubs=tuple(hubs),
        initial_twin=_twin(twin),
        enabled=not disabled,
        reprovision=ReprovisionPolicy(update_hub_assignment, migrate_device_data),
    )
    view = (
        cli_context(ctx)
        .fleet("hub enrollment-group add")
        .provisioning_enrollments.add(Actor.local_admin(), spec)
    )
    err_console.print(f"enrollment group {view.name} added (hub CA {view.ca_name})")
    _print_view(view, output)


@group_app.command("list")
def group_list(ctx: typer.Context, output: OutputOption = Output.TABLE) -> None:
    """List the enrollment groups (``-o json``: DPS's EnrollmentGroup shape)."""
    fleet = cli_context(ctx).fleet("hub enrollment-group list")
    _print_list(
        fleet.provisioning_enrollments.list(Actor.local_admin(), EnrollmentKind.GROUP), output
    )


@group_app.command("show")
def group_show(ctx: typer.Context, group_id: GroupId, output: OutputOption = Output.TABLE) -> None:
    """Show an enrollment group."""
    fleet = cli_context(ctx).fleet("hub enrollment-group show")
    view = fleet.provisioning_enrollments.get(Actor.local_admin(), EnrollmentKind.GROUP, group_id)
    _print_view(view, output)


def _set_enabled(ctx: typer.Context, kind: EnrollmentKind, name: str, enabled: bool) -> None:
    command = "enrollment-group" if kind is EnrollmentKind.GROUP else "enrollment"
    state = "enable" if enabled else "disable"
    fleet = cli_context(ctx).fleet(f"hub {command} {state}")
    fleet.provisioning_enrollments.set_enabled(Actor.local_admin(), kind, name, enabled)
    err_console.print(f"{kind.value} enrollment {name} {state}d")


@group_app.command("disable")
def group_disable(ctx: typer.Context, group_id: GroupId) -> None:
    """Disable a group: its devices' registrations end ``disabled`` (hub entries stay)."""
    _set_enabled(ctx, EnrollmentKind.GROUP, group_id, False)


@group_app.command("enable")
def group_enable(ctx: typer.Context, group_id: GroupId) -> None:
    """Enable a group again."""
    _set_enabled(ctx, EnrollmentKind.GROUP, group_id, True)


def _delete(ctx: typer.Context, kind: EnrollmentKind, name: str) -> None:
    command = "enrollment-group" if kind is EnrollmentKind.GROUP else "enrollment"
    fleet = cli_context(ctx).fleet(f"hub {command} delete")
    fleet.provisioning_enrollments.delete(Actor.local_admin(), kind, name)
    err_console.print(f"{kind.value} enrollment {name} deleted")


@group_app.command("delete")
def group_delete(ctx: typer.Context, group_id: GroupId) -> None:
    """Delete a group; devices it provisioned stay registered in their hubs."""
    _delete(ctx, EnrollmentKind.GROUP, group_id)


# --------------------------------------------------------------------------- individual


@enrollment_app.command("add")
def enrollment_add(
    ctx: typer.Context,
    registration_id: RegistrationId,
    certificate: Annotated[
        Path,
        typer.Option(
            help="The device's certificate (PEM or DER); it must chain to a verified hub CA."
        ),
    ],
    hub: HubOption = None,
    allocation: AllocationOption = None,
    twin: TwinOption = None,
    disabled: DisabledOption = False,
    update_hub_assignment: UpdateOption = True,
    migrate_device_data: MigrateOption = True,
    output: OutputOption = Output.TABLE,
) -> None:
    """Add an individual enrollment: one registration id, pinned to its certificate."""
    hubs = list(hub or [])
    spec = EnrollmentSpec(
        EnrollmentKind.INDIVIDUAL,
        registration_id,
        certificate=read_file(certificate, "certificate"),
        allocation=_allocation(allocation, hubs),
        hubs=tuple(hubs),
        initial_twin=_twin(twin),
        enabled=not disabled,
        reprovision=ReprovisionPolicy(update_hub_assignment, migrate_device_data),
    )
    view = (
        cli_context(ctx)
        .fleet("hub enrollment add")
        .provisioning_enrollments.add(Actor.local_admin(), spec)
    )
    err_console.print(f"individual enrollment {view.name} added ({view.certificate_sha1})")
    _print_view(view, output)


@enrollment_app.command("list")
def enrollment_list(ctx: typer.Context, output: OutputOption = Output.TABLE) -> None:
    """List the individual enrollments (``-o json``: DPS's IndividualEnrollment shape)."""
    fleet = cli_context(ctx).fleet("hub enrollment list")
    views = fleet.provisioning_enrollments.list(Actor.local_admin(), EnrollmentKind.INDIVIDUAL)
    _print_list(views, output)


@enrollment_app.command("show")
def enrollment_show(
    ctx: typer.Context, registration_id: RegistrationId, output: OutputOption = Output.TABLE
) -> None:
    """Show an individual enrollment."""
    fleet = cli_context(ctx).fleet("hub enrollment show")
    view = fleet.provisioning_enrollments.get(
        Actor.local_admin(), EnrollmentKind.INDIVIDUAL, registration_id
    )
    _print_view(view, output)


@enrollment_app.command("disable")
def enrollment_disable(ctx: typer.Context, registration_id: RegistrationId) -> None:
    """Disable an individual enrollment."""
    _set_enabled(ctx, EnrollmentKind.INDIVIDUAL, registration_id, False)


@enrollment_app.command("enable")
def enrollment_enable(ctx: typer.Context, registration_id: RegistrationId) -> None:
    """Enable an individual enrollment again."""
    _set_enabled(ctx, EnrollmentKind.INDIVIDUAL, registration_id, True)


@enrollment_app.command("delete")
def enrollment_delete(ctx: typer.Context, registration_id: RegistrationId) -> None:
    """Delete an individual enrollment."""
    _delete(ctx, EnrollmentKind.INDIVIDUAL, registration_id)
