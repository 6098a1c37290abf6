"""``fleetpki serve``: the HTTPS API and the MQTT hub of the local home."""

from __future__ import annotations

from typing import Annotated

import typer

from fleetpki.cli.context import cli_context
from fleetpki.cli.output import err_console
from fleetpki.errors import ValidationError
from fleetpki.settings import Settings

__all__ = ["serve"]


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    api_port: Annotated[int | None, typer.Option(help="HTTPS API port (default 8443).")] = None,
    hostname: Annotated[
        str | None, typer.Option(help="DNS name for the server certificate.")
    ] = None,
    only: Annotated[str | None, typer.Option(help="Run only `ca` (the API) or `hub`.")] = None,
    mqtt_port: Annotated[
        int | None, typer.Option(help="The hub's MQTT/TLS port (default 8883).")
    ] = None,
) -> None:
    """Serve the HTTPS API (EZCA-compatible routes and /v1) and the MQTT hub."""
    from fleetpki.api.server import bind_socket
    from fleetpki.api.server import serve as run_serve

    if only not in (None, "ca", "hub"):
        raise ValidationError("cli.bad_only", "--only must be `ca` or `hub`")
    state = cli_context(ctx)
    state.require_local("serve")
    settings = Settings.load(state.home_path())
    # The hub reads its address from the settings (fleetpki.hub.server.start_hub).
    settings = settings.with_changes(
        host=host or settings.host,
        hostname=hostname or settings.hostname,
        mqtt_port=settings.mqtt_port if mqtt_port is None else mqtt_port,
    )
    port = settings.api_port if api_port is None else api_port
    api_socket = None
    if only != "hub":
        # Bound first: a taken port is reported before anything changes.
        api_socket = bind_socket(settings.host, port)
        settings = _advertise(settings, port)
    fleet = state.open(settings)
    # Every CA key is loaded now: a token without them stops serve here (docs/keystore.md).
    fleet.cas.check_keys()
    for warning in fleet.key_passphrase.get().warnings(settings.home):
        err_console.print(f"[yellow]warning[/yellow]: {warning}", highlight=False)
    if only != "hub":
        err_console.print(
            f"fleetpki API on https://{settings.host}:{port}  (public URL {settings.public_url}; "
            f"CA bundle: {settings.home / 'tls' / 'ca-bundle.pem'}; Ctrl-C stops)",
            highlight=False,
        )
    if only != "ca":
        err_console.print(f"fleetpki hub on mqtts://{settings.host}:{settings.mqtt_port}")
    run_serve(
        fleet,
        host=settings.host,
        api_port=port,
        hostname=settings.hostname,
        only="ca" if only == "ca" else "hub" if only == "hub" else None,
        api_socket=api_socket,
    )


def _advertise(settings: Settings, port: int) -> Settings:
    from fleetpki.api.server import advertised_settings

    advertised, note = advertised_settings(settings, port)
    if advertised.public_url != settings.public_url:
        # Saved, so that the commands run beside the server (`hub connection-string`,
        # `cert request`) name the port it serves.
        saved = Settings.load(settings.home).with_changes(
            public_url=advertised.public_url, api_port=advertised.api_port
        )
        saved.save()
        note = f"{note}; saved in {settings.config_path}"
    if note:
        err_console.print(f"[yellow]note[/yellow]: {note}", highlight=False)
    return advertised
