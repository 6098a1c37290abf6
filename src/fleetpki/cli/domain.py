"""``fleetpki domain``: device ids with owners and requesters, locally or with ``--server``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from fleetpki.application import FleetPKI
from fleetpki.cli.context import cli_context
from fleetpki.cli.output import Output, OutputOption, console, print_json, print_table, table
from fleetpki.services import Actor

__all__ = ["app"]

app = typer.Typer(help="Domains: device ids with owners and requesters.", no_args_is_help=True)


def _local_register(
    fleet: FleetPKI,
    name: str,
    owners: list[str],
    requesters: list[str],
    ca: str | None,
    template: str | None,
) -> dict[str, Any]:
    from fleetpki.api.presenters import domain_out

    # A domain registered without --ca goes to the CA that issues now: the one rule.
    ca_id = ca or fleet.cas.current_issuer().id
    domain = fleet.domains.register(
        Actor.local_admin(),
        ca_id=ca_id,
        template_id=template,
        name=name,
        owners=owners,
        requesters=requesters,
    )
    return domain_out(domain).model_dump(mode="json")


def _local_list(fleet: FleetPKI, name: str | None) -> list[dict[str, Any]]:
    from fleetpki.api.presenters import domain_out

    found = fleet.domains.list(Actor.local_admin(), name=name)
    return [domain_out(d).model_dump(mode="json") for d in found]


@app.command("register")
def domain_register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The device id or DNS name.")],
    owner: Annotated[list[str], typer.Option("--owner", help="Owner principal id (repeatable).")],
    requester: Annotated[
        list[str] | None, typer.Option("--requester", help="Requester principal id (repeatable).")
    ] = None,
    ca: Annotated[str | None, typer.Option(help="Issuing CA id (default: the only one).")] = None,
    template: Annotated[
        str | None, typer.Option(help="Template id (default: the CA's first).")
    ] = None,
) -> None:
    """Register a domain with its owners and requesters."""
    state = cli_context(ctx)
    if client := state.client():
        domain = client.register_domain(
            name, owners=owner, requesters=requester or [], ca_id=ca, template_id=template
        )
    else:
        domain = _local_register(
            state.fleet("domain register"), name, owner, requester or [], ca, template
        )
    console.print(f"registered domain {domain['name']} ({domain['id']})")


@app.command("list")
def domain_list(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option("--name", help="Only this domain.")] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """List domains with their owners and requesters."""
    state = cli_context(ctx)
    client = state.client()
    found = client.list_domains(name) if client else _local_list(state.fleet("domain list"), name)
    if output is Output.JSON:
        print_json(found)
        return
    rows = table("name", "id", "CA", "owners", "requesters", wrap=["name"])
    for d in found:
        rows.add_row(
            d["name"], d["id"], d["ca_id"], "\n".join(d["owners"]), "\n".join(d["requesters"])
        )
    print_table(rows)
