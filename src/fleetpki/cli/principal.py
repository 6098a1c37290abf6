"""``fleetpki principal``: the users and services that own domains and request certificates."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from fleetpki.application import FleetPKI
from fleetpki.cli.context import cli_context
from fleetpki.cli.output import Output, OutputOption, console, print_json, print_table, table
from fleetpki.services import Actor
from fleetpki.services.ca_views import PrincipalView

__all__ = ["app"]

app = typer.Typer(help="Principals (users and services).", no_args_is_help=True)


def _principal_json(principal: PrincipalView) -> dict[str, Any]:
    # The API has no principal resource yet; these are the store's field names.
    return {
        "id": principal.id,
        "friendly_name": principal.friendly_name,
        "principal_type": principal.principal_type,
        "is_admin": principal.is_admin,
    }


def _add(
    fleet: FleetPKI, principal_id: str, name: str, principal_type: str, admin: bool
) -> dict[str, Any]:
    added = fleet.principals.add(
        Actor.local_admin(), principal_id, name, principal_type=principal_type, is_admin=admin
    )
    return _principal_json(added)


def _list(fleet: FleetPKI) -> list[dict[str, Any]]:
    return [_principal_json(p) for p in fleet.principals.list()]


@app.command("add")
def principal_add(
    ctx: typer.Context,
    principal_id: Annotated[str, typer.Argument(help="An Entra-style object id (GUID).")],
    name: Annotated[str, typer.Option("--name", help="Friendly name.")],
    principal_type: Annotated[
        str, typer.Option("--type", help="User or ServicePrincipal.")
    ] = "User",
    admin: Annotated[bool, typer.Option("--admin", help="Make the principal an admin.")] = False,
) -> None:
    """Register a principal that can own domains and request certificates."""
    fleet = cli_context(ctx).fleet("principal add")
    added = _add(fleet, principal_id, name, principal_type, admin)
    console.print(f"added principal {added['id']} ({added['friendly_name']})")


@app.command("list")
def principal_list(ctx: typer.Context, output: OutputOption = Output.TABLE) -> None:
    """List principals."""
    found = _list(cli_context(ctx).fleet("principal list"))
    if output is Output.JSON:
        print_json(found)
        return
    rows = table("id", "name", "type", "admin", wrap=["name"])
    for p in found:
        rows.add_row(
            p["id"], p["friendly_name"], p["principal_type"], "yes" if p["is_admin"] else ""
        )
    print_table(rows)
