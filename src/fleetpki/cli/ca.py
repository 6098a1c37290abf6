"""``fleetpki ca``: list, show and export certificate authorities, locally or with ``--server``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fleetpki.application import FleetPKI
from fleetpki.cli.context import cli_context
from fleetpki.cli.output import (
    Output,
    OutputOption,
    fmt_iso,
    print_fields,
    print_json,
    print_table,
    table,
    write_out,
)

__all__ = ["app"]

app = typer.Typer(help="Certificate authorities.", no_args_is_help=True)

CaId = Annotated[str, typer.Argument(help="The CA id.")]


# Each command reads its answer either from the server (the API's JSON) or from the
# local home through the presenter the API uses, so both print the same fields.


def _local_list(fleet: FleetPKI) -> list[dict[str, Any]]:
    from fleetpki.api.presenters import ca_out

    return [ca_out(fleet.urls, ca).model_dump(mode="json") for ca in fleet.cas.list()]


def _local_show(fleet: FleetPKI, ca_id: str) -> dict[str, Any]:
    from fleetpki.api.presenters import ca_out

    return ca_out(fleet.urls, fleet.cas.get(ca_id)).model_dump(mode="json")


def _local_chain_pem(fleet: FleetPKI, ca_id: str) -> str:
    from fleetpki.api.presenters import pem_of

    chain = fleet.cas.chain(ca_id)
    return "".join(pem_of(c) for c in chain)


@app.command("list")
def ca_list(ctx: typer.Context, output: OutputOption = Output.TABLE) -> None:
    """List the CAs."""
    state = cli_context(ctx)
    client = state.client()
    cas = client.list_cas() if client else _local_list(state.fleet("ca list"))
    if output is Output.JSON:
        print_json(cas)
        return
    rows = table("id", "name", "tier", "key", "status", "not after", wrap=["name"])
    for ca in cas:
        rows.add_row(
            ca["id"], ca["name"], ca["tier"], ca["key_spec"], ca["status"], fmt_iso(ca["not_after"])
        )
    print_table(rows)


@app.command("show")
def ca_show(ctx: typer.Context, ca_id: CaId, output: OutputOption = Output.TABLE) -> None:
    """Show one CA."""
    state = cli_context(ctx)
    client = state.client()
    ca = client.get_ca(ca_id) if client else _local_show(state.fleet("ca show"), ca_id)
    if output is Output.JSON:
        print_json(ca)
        return
    print_fields(
        [
            ("id", ca["id"]),
            ("name", ca["name"]),
            ("tier", ca["tier"]),
            ("parent", ca["parent_id"] or "-"),
            ("status", ca["status"]),
            ("key", ca["key_spec"]),
            ("subject", ca["subject"]),
            ("serial", ca["serial"]),
            ("sha1", ca["sha1"]),
            ("not before", fmt_iso(ca["not_before"])),
            ("not after", fmt_iso(ca["not_after"])),
            ("crl", ca["crl_url"]),
        ]
    )


@app.command("export")
def ca_export(
    ctx: typer.Context,
    ca_id: CaId,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Export a CA's certificate chain as PEM (the CA first, then its parents)."""
    state = cli_context(ctx)
    client = state.client()
    text = (
        client.ca_chain_pem(ca_id) if client else _local_chain_pem(state.fleet("ca export"), ca_id)
    )
    write_out(text, out)
