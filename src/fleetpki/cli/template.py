"""``fleetpki template``: the issuance templates, locally or with ``--server``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from fleetpki.application import FleetPKI
from fleetpki.cli.context import cli_context
from fleetpki.cli.output import Output, OutputOption, print_json, print_table, table
from fleetpki.pki.profile import Template

__all__ = ["app"]

app = typer.Typer(help="Issuance templates.", no_args_is_help=True)


def _local_list(fleet: FleetPKI, ca_id: str | None) -> list[dict[str, Any]]:
    from fleetpki.api.presenters import template_out

    return [template_out(t).model_dump(mode="json") for t in fleet.templates.list(ca_id)]


@app.command("list")
def template_list(
    ctx: typer.Context,
    ca: Annotated[str | None, typer.Option("--ca", help="Only this CA's templates.")] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """List the issuance templates."""
    state = cli_context(ctx)
    client = state.client()
    templates = (
        client.list_templates(ca) if client else _local_list(state.fleet("template list"), ca)
    )
    if output is Output.JSON:
        print_json(templates)
        return
    rows = table(
        "id", "name", "CA", "max days", "key types", "EKUs", wrap=["name", "key types", "EKUs"]
    )
    for t in templates:
        rows.add_row(
            t["id"],
            t["name"],
            t["ca_id"],
            str(t["max_validity_days"]),
            ", ".join(t["allowed_key_specs"]),
            ", ".join(Template.eku_name(e) for e in t["default_ekus"]),
        )
    print_table(rows)
