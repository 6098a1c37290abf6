"""``fleetpki token``: API tokens, shown once and stored hashed."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Annotated, Any

import typer

from fleetpki.application import FleetPKI
from fleetpki.cli.context import cli_context
from fleetpki.cli.inputs import parse_duration
from fleetpki.cli.output import (
    Output,
    OutputOption,
    console,
    err_console,
    print_json,
    print_table,
    table,
)
from fleetpki.services import Actor
from fleetpki.services.principals import NewToken, TokenView

__all__ = ["app"]

app = typer.Typer(help="API tokens.", no_args_is_help=True)


def _create(
    fleet: FleetPKI, principal_id: str, name: str, lifetime: dt.timedelta | None
) -> NewToken:
    return fleet.principals.create_token(
        Actor.local_admin(), principal_id, name=name, lifetime=lifetime
    )


@app.command("create")
def token_create(
    ctx: typer.Context,
    principal: Annotated[str, typer.Option("--principal", help="The principal id.")],
    name: Annotated[str, typer.Option(help="A label for the token.")] = "api",
    expires: Annotated[
        str | None, typer.Option(help="Lifetime such as 90d; default never.")
    ] = None,
) -> None:
    """Create an API token.  The token is shown once; only its hash is stored."""
    lifetime = parse_duration(expires) if expires else None
    new = _create(cli_context(ctx).fleet("token create"), principal, name, lifetime)
    err_console.print(f"token {new.token_id} for {new.principal_id}; it will not be shown again:")
    sys.stdout.write(new.secret + "\n")


def _when(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def _token_json(token: TokenView) -> dict[str, Any]:
    # The field names of GET /v1/tokens.
    return {
        "id": token.token_id,
        "principal_id": token.principal_id,
        "name": token.name,
        "prefix": token.prefix,
        "created_at": _when(token.created_at),
        "expires_at": _when(token.expires_at),
        "revoked_at": _when(token.revoked_at),
        "last_used_at": _when(token.last_used_at),
    }


@app.command("list")
def token_list(
    ctx: typer.Context,
    principal: Annotated[
        str | None, typer.Option("--principal", help="Only this principal's tokens.")
    ] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """List API tokens (never their secrets): id, principal, name, prefix, dates."""
    fleet = cli_context(ctx).fleet("token list")
    found = [_token_json(t) for t in fleet.principals.tokens(Actor.local_admin(), principal)]
    if output is Output.JSON:
        print_json(found)
        return
    rows = table("id", "principal", "name", "prefix", "expires", "revoked", "last used")
    for t in found:
        rows.add_row(
            t["id"],
            t["principal_id"],
            t["name"],
            t["prefix"],
            t["expires_at"] or "never",
            t["revoked_at"] or "",
            t["last_used_at"] or "",
        )
    print_table(rows)


@app.command("revoke")
def token_revoke(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(help="The token's id (from `token list`).")],
) -> None:
    """Revoke an API token: it authenticates nothing from now on, and the principal's
    portal sessions signed in with a token end."""
    fleet = cli_context(ctx).fleet("token revoke")
    revoked = fleet.principals.revoke_token(Actor.local_admin(), token_id)
    console.print(f"token {revoked.token_id} of {revoked.principal_id} is revoked")
