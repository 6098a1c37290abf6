"""``fleetpki token``: API tokens, shown once and stored hashed."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Annotated

import typer

from fleetpki.application import FleetPKI
from fleetpki.cli.context import cli_context
from fleetpki.cli.inputs import parse_duration
from fleetpki.cli.output import err_console
from fleetpki.services import Actor
from fleetpki.services.principals import NewToken

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
