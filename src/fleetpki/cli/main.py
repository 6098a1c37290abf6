"""The ``fleetpki`` command: assembles the command groups and turns errors into one line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetpki import __version__
from fleetpki.cli import ca, certificate, device, domain, hub, principal, template, token
from fleetpki.cli import home as home_cli
from fleetpki.cli import serve as serve_cli
from fleetpki.cli.context import CliContext, UsageProblem
from fleetpki.cli.output import console, err_console
from fleetpki.errors import FleetPKIError

__all__ = ["app", "main"]

app = typer.Typer(
    name="fleetpki",
    help="A self-hosted certificate authority for IoT device fleets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("init")(home_cli.init)
app.command("serve")(serve_cli.serve)
app.command("demo")(home_cli.demo)
app.add_typer(ca.app, name="ca")
app.add_typer(template.app, name="template")
app.add_typer(principal.app, name="principal")
app.add_typer(token.app, name="token")
app.add_typer(domain.app, name="domain")
app.add_typer(certificate.app, name="cert")
app.add_typer(hub.app, name="hub")
app.add_typer(device.app, name="device")


def _print_version(value: bool) -> None:
    if value:
        console.print(f"fleetpki {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    ctx: typer.Context,
    home: home_cli.HomeOption = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
    server: Annotated[
        str | None,
        typer.Option(
            "--server", envvar="FLEETPKI_SERVER", help="Act on a remote fleetpki server (URL)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="FLEETPKI_TOKEN", help="API token for --server.", show_default=False
        ),
    ] = None,
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            "--ca-bundle", envvar="FLEETPKI_CA_BUNDLE", help="CA bundle to trust for --server."
        ),
    ] = None,
) -> None:
    """A self-hosted certificate authority for IoT device fleets."""
    state = CliContext(home=home, server=server, token=token, ca_bundle=ca_bundle)
    ctx.obj = state
    ctx.call_on_close(state.close)


def main() -> None:
    """Run the CLI; a fleetpki error prints one line and exits with status 1.

    Usage errors (a missing argument, an unknown option, a local-only command with
    ``--server``) exit with status 2; Click's own print a usage line first.
    """
    try:
        app()
    except FleetPKIError as exc:
        err_console.print(
            f"[red]error:[/red] {exc.message} [dim]({exc.code})[/dim]", highlight=False
        )
        raise SystemExit(2 if isinstance(exc, UsageProblem) else 1) from None
