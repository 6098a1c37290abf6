"""``fleetpki ca``: list, show, export, renew and activate CAs, locally or with ``--server``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fleetpki.application import FleetPKI
from fleetpki.cli.context import CliContext, cli_context
from fleetpki.cli.output import (
    Output,
    OutputOption,
    err_console,
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


def _generations(state: CliContext, ca_id: str) -> list[dict[str, Any]]:
    if client := state.client():
        return client.ca_generations(ca_id)
    from fleetpki.api.ca_lifecycle import generation_out

    fleet = state.fleet("ca show")
    return [
        generation_out(fleet.urls, g).model_dump(mode="json")
        for g in fleet.ca_lifecycle.generations(ca_id)
    ]


def _local_chain_pem(fleet: FleetPKI, ca_id: str) -> str:
    from fleetpki.api.presenters import pem_of

    chain = fleet.cas.chain(ca_id)
    return "".join(pem_of(c) for c in chain)


def _days(text: str) -> int:
    """``90d`` or ``90``: a number of days."""
    value = text.strip().lower().removesuffix("d")
    if not value.isascii() or not value.isdigit() or not 0 < int(value) <= 36500:
        raise typer.BadParameter(f"{text!r} is not a number of days such as 90d")
    return int(value)


@app.command("list")
def ca_list(
    ctx: typer.Context,
    expiring: Annotated[
        str | None,
        typer.Option(help="Only CAs that expire within this many days (e.g. 90d)."),
    ] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """List the CAs (``--expiring 90d``: those that need renewing soon)."""
    import datetime as dt

    within = _days(expiring) if expiring is not None else None
    state = cli_context(ctx)
    client = state.client()
    cas = client.list_cas() if client else _local_list(state.fleet("ca list"))
    if within is not None:
        horizon = dt.datetime.now(dt.UTC) + dt.timedelta(days=within)
        cas = [c for c in cas if dt.datetime.fromisoformat(c["not_after"]) <= horizon]
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
    generations = _generations(state, ca_id)
    if output is Output.JSON:
        print_json(ca | {"generations": generations})
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
            ("generation", ca["generation"]),
        ]
    )
    rows = table("gen", "state", "key", "sha1", "not before", "not after", "waiting for")
    for g in generations:
        rows.add_row(
            str(g["number"]),
            g["state"],
            g["key_spec"] + (" (new key)" if g["rekeyed"] else ""),
            g["sha1"][:16] + "…",
            fmt_iso(g["not_before"]),
            fmt_iso(g["not_after"]),
            _waiting_for(g),
        )
    print_table(rows)


def _waiting_for(generation: dict[str, Any]) -> str:
    """What a pending generation waits for: its hub links, its parent, and if overdue."""
    waits = list(generation["pending_links"])
    if generation.get("waits_for_parent"):
        waits.append(f"parent generation {generation['parent_generation']}")
    text = ", ".join(waits) or "-"
    return f"{text} (overdue)" if generation.get("overdue") else text


@app.command("renew")
def ca_renew(
    ctx: typer.Context,
    ca_id: CaId,
    rekey: Annotated[
        bool | None,
        typer.Option(
            "--rekey/--same-key",
            help="A new key, or the current one (default: a new key once it is a year old).",
        ),
    ] = None,
    days: Annotated[
        int | None,
        typer.Option(min=1, max=36500, help="Validity in days (default: the current lifetime)."),
    ] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Renew a CA: a new generation, active once every hub link that trusts it has it."""
    state = cli_context(ctx)
    if client := state.client():
        generation = client.renew_ca(ca_id, rekey=rekey, days=days)
    else:
        from fleetpki.api.ca_lifecycle import generation_out
        from fleetpki.services import Actor
        from fleetpki.services.ca_lifecycle import RenewCommand

        fleet = state.fleet("ca renew")
        view = fleet.ca_lifecycle.renew(Actor.local_admin(), ca_id, RenewCommand(rekey, days))
        generation = generation_out(fleet.urls, view).model_dump(mode="json")
    if output is Output.JSON:
        print_json(generation)
        return
    err_console.print(_generation_sentence(generation), highlight=False)


@app.command("activate")
def ca_activate(
    ctx: typer.Context,
    ca_id: CaId,
    force: Annotated[
        bool, typer.Option(help="Activate although some hub links do not hold it yet.")
    ] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Activate a CA's pending generation (normally automatic once every link has it)."""
    state = cli_context(ctx)
    if client := state.client():
        generation = client.activate_ca(ca_id, force=force)
    else:
        from fleetpki.api.ca_lifecycle import generation_out
        from fleetpki.services import Actor

        fleet = state.fleet("ca activate")
        view = fleet.ca_lifecycle.activate(Actor.local_admin(), ca_id, force=force)
        generation = generation_out(fleet.urls, view).model_dump(mode="json")
    if output is Output.JSON:
        print_json(generation)
        return
    err_console.print(_generation_sentence(generation), highlight=False)


def _generation_sentence(generation: dict[str, Any]) -> str:
    key = "a new key" if generation["rekeyed"] else "the same key"
    text = (
        f"CA {generation['ca_id']} generation {generation['number']} ({key}, until "
        f"{fmt_iso(generation['not_after'])}): {generation['state']}"
    )
    if generation["pending_links"]:
        text += (
            f"; waiting for hub links {', '.join(generation['pending_links'])} to hold it "
            "(`fleetpki hub link status`; `fleetpki ca activate --force` to go ahead)"
        )
    return text


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
