"""``fleetpki serve``: the HTTPS API and the MQTT hub of the local home."""

from __future__ import annotations

import gc
import re
from typing import TYPE_CHECKING, Annotated

import typer

from fleetpki.cli.context import cli_context
from fleetpki.cli.output import err_console
from fleetpki.errors import ValidationError
from fleetpki.settings import AZURE_AMQP_PORT, AZURE_HTTPS_PORT, AZURE_MQTT_PORT, Settings

if TYPE_CHECKING:
    from fleetpki.api.server import Only

__all__ = ["azure_port_notes", "serve"]

# A hub node's name: its consumer is ``hub:<name>`` and ``-w<slot>`` may follow it.
_HUB_NODE = re.compile(r"[A-Za-z0-9._-]{1,48}")


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
    amqp_port: Annotated[
        int | None,
        typer.Option(
            help="The hub's AMQP/TLS port (default 5671, where the service SDKs dial; -1: off)."
        ),
    ] = None,
    azure_ports: Annotated[
        bool,
        typer.Option(
            "--azure-ports",
            help="Listen where the unmodified Azure SDKs dial: MQTT on 8883, HTTPS (the "
            "service API, MQTT over WebSockets) on 443. 443 needs a privilege; the "
            "error says how to grant it or forward the port.",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="API processes on the one port (default: the number of cores). The first "
            "also runs the MQTT port, the hub links and the housekeeping.",
        ),
    ] = None,
    hub_node: Annotated[
        str | None,
        typer.Option(
            help="This hub node's name (default: hub_node of the configuration, `builtin`). "
            "Every hub process on one database needs its own (docs/deployment.md).",
        ),
    ] = None,
    database_wait: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=3600,
            help="Seconds to keep trying a database that does not answer at the start "
            "(default: database_start_wait_seconds of the configuration, 60; 0: one try).",
        ),
    ] = None,
) -> None:
    """Serve the HTTPS API (EZCA-compatible routes and /v1) and the MQTT hub.

    The Azure device SDK dials its HostName on 8883 (and 443 for WebSockets) and the
    service SDK uses the same HostName for REST, so one HostName serves both only with
    the API on 443 (``--azure-ports``); otherwise service connection strings carry the
    API port and device ones the bare hostname.
    """
    from fleetpki.api.server import bind_socket, serve_workers, worker_count
    from fleetpki.api.server import serve as run_serve
    from fleetpki.application import FleetPKI
    from fleetpki.hub.server import bind_mqtt_socket

    if only not in (None, "ca", "hub"):
        raise ValidationError("cli.bad_only", "--only must be `ca` or `hub`")
    if only == "hub" and workers not in (None, 1):
        raise ValidationError(
            "cli.workers_need_api",
            "--workers runs API processes; `--only hub` serves MQTT in one process (run "
            "more hub nodes as separate `fleetpki serve --only hub` with their own hub_node)",
        )
    if hub_node is not None and not _HUB_NODE.fullmatch(hub_node):
        raise ValidationError(
            "cli.bad_hub_node", "--hub-node is 1 to 48 letters, digits, '.', '_' or '-'"
        )
    processes = 1 if only == "hub" else (workers or worker_count())
    state = cli_context(ctx)
    state.require_local("serve")
    if azure_ports:
        if (api_port not in (None, AZURE_HTTPS_PORT)) or (mqtt_port not in (None, AZURE_MQTT_PORT)):
            raise ValidationError(
                "cli.conflicting_ports", "--azure-ports sets --api-port 443 and --mqtt-port 8883"
            )
        api_port, mqtt_port = AZURE_HTTPS_PORT, AZURE_MQTT_PORT
    settings = Settings.load(state.home_path())
    # The hub reads its address from the settings (fleetpki.hub.server.start_hub).
    settings = settings.with_changes(
        host=host or settings.host,
        hostname=hostname or settings.hostname,
        mqtt_port=settings.mqtt_port if mqtt_port is None else mqtt_port,
        hub_node=hub_node or settings.hub_node,
        amqp_port=settings.amqp_port if amqp_port is None else amqp_port,
        database_start_wait_seconds=(
            settings.database_start_wait_seconds if database_wait is None else database_wait
        ),
    )
    port = settings.api_port if api_port is None else api_port
    _raise_open_files(settings, only)
    api_socket = None
    if only != "hub":
        # Bound first: a taken port is reported before anything changes.
        api_socket = bind_socket(settings.host, port)
        settings = _advertise(settings, port)
    mqtt_socket = None
    if processes > 1 and only != "ca":
        # Bound once here and inherited by the primary worker.
        mqtt_socket = bind_mqtt_socket(settings.host, settings.mqtt_port)
        settings = settings.with_changes(mqtt_port=mqtt_socket.getsockname()[1])
    # Every CA key is loaded now: a token without them stops serve here (docs/keystore.md).
    # With workers, the parent opens the home for these checks (and the migration) and
    # closes it again before it forks: each worker opens its own.
    # A database started together with the server may not answer yet: tried again
    # with backoff for database_start_wait_seconds, saying so, before serve gives up.
    wait = settings.database_start_wait_seconds
    if processes > 1:
        fleet = FleetPKI.open(settings, database_wait=wait, on_database_wait=_waiting)
    else:
        fleet = state.open(settings, database_wait=wait, on_database_wait=_waiting)
    try:
        fleet.cas.check_keys()
        for warning in fleet.key_passphrase.get().warnings(settings.home):
            err_console.print(f"[yellow]warning[/yellow]: {warning}", highlight=False)
    finally:
        if processes > 1:
            fleet.close()
    if only != "hub":
        err_console.print(
            f"fleetpki API on https://{settings.host}:{port}  (public URL {settings.public_url}; "
            f"CA bundle: {settings.home / 'tls' / 'ca-bundle.pem'}; Ctrl-C stops)",
            highlight=False,
        )
        how = "an API token or OpenID Connect" if settings.portal_oidc_client_id else "an API token"
        err_console.print(
            f"fleetpki portal at {settings.public_url.rstrip('/')}/  (sign in with {how})",
            highlight=False,
        )
        if processes > 1:
            err_console.print(
                f"fleetpki API: starting {processes} worker processes", highlight=False
            )
    if only != "ca":
        err_console.print(f"fleetpki hub on mqtts://{settings.host}:{settings.mqtt_port}")
        if settings.amqp_port >= 0:
            err_console.print(f"fleetpki hub on amqps://{settings.host}:{settings.amqp_port}")
        notes = azure_port_notes(
            settings.hostname, port, settings.mqtt_port, only, settings.amqp_port
        )
        for note in notes:
            err_console.print(f"[yellow]note[/yellow]: {note}", highlight=False)
    only_value: Only | None = "ca" if only == "ca" else "hub" if only == "hub" else None
    # What start-up built (the application, its modules, SQLAlchemy's and FastAPI's
    # registries: most of the heap) lives as long as the process. Frozen, it is left out
    # of the cyclic collector's full collections, each of which walked all of it: pauses
    # of the event loop of ~0.2 s every few seconds under the hub's telemetry load (and
    # forked workers share those pages). Done here, for the serve process only: a
    # program that runs the servers in process (the tests do) keeps its collector whole.
    gc.freeze()
    if processes > 1:
        code = serve_workers(
            settings,
            workers=processes,
            only=only_value,
            api_socket=api_socket,
            mqtt_socket=mqtt_socket,
            on_started=lambda: err_console.print(
                f"fleetpki API: {processes} worker processes serving", highlight=False
            ),
        )
        if code:
            raise typer.Exit(code)
        return
    run_serve(
        fleet,
        host=settings.host,
        api_port=port,
        hostname=settings.hostname,
        only=only_value,
        api_socket=api_socket,
    )


def _waiting(message: str) -> None:
    err_console.print(f"[yellow]waiting[/yellow]: {message}", highlight=False)


def _raise_open_files(settings: Settings, only: str | None) -> None:
    """Raise the open-files limit for every connection the caps allow, and say so."""
    from fleetpki.process_limits import (
        open_files_needed,
        raise_open_files_limit,
        release_large_buffers_to_os,
    )

    release_large_buffers_to_os()
    limit = raise_open_files_limit()
    if limit.soft is None:
        return
    if limit.raised:
        err_console.print(
            f"fleetpki: open files limit raised from {limit.before} to {limit.soft} "
            "(the hard limit)",
            highlight=False,
        )
    needed = open_files_needed(
        api_connections=settings.api_max_connections if only != "hub" else None,
        mqtt_connections=settings.mqtt_max_connections if only != "ca" else None,
        amqp=only != "ca" and settings.amqp_port >= 0,
    )
    if limit.soft < needed:
        err_console.print(
            f"[yellow]warning[/yellow]: the open files limit is {limit.soft} (hard limit "
            f"{limit.hard}), fewer than the {needed} that api_max_connections "
            f"({settings.api_max_connections}) and mqtt_max_connections "
            f"({settings.mqtt_max_connections}) may need: connections past it are refused "
            "at accept. Raise the hard limit (LimitNOFILE= in a systemd unit, `ulimit -Hn` "
            "as root, nofile in /etc/security/limits.conf) or lower the caps",
            highlight=False,
        )


def azure_port_notes(
    hostname: str,
    api_port: int,
    mqtt_port: int,
    only: str | None,
    amqp_port: int = AZURE_AMQP_PORT,
) -> list[str]:
    """What an Azure SDK user must know about the ports served (ref §0), one sentence each."""
    notes = []
    if amqp_port not in (AZURE_AMQP_PORT, -1):
        notes.append(
            f"the service SDK's send_c2d_message and azure-eventhub dial AMQP on "
            f"{AZURE_AMQP_PORT} only; they cannot reach this hub on {amqp_port} (forward "
            f"{AZURE_AMQP_PORT} to it)"
        )
    if mqtt_port != AZURE_MQTT_PORT:
        notes.append(
            f"the Azure device SDK dials MQTT on {AZURE_MQTT_PORT} only; it cannot reach this "
            f"hub on {mqtt_port} (forward {AZURE_MQTT_PORT} to it, or use --azure-ports)"
        )
    if only != "hub" and api_port != AZURE_HTTPS_PORT:
        notes.append(
            f"the API is on {api_port}, not {AZURE_HTTPS_PORT}: service connection strings "
            f"carry HostName={hostname}:{api_port} and device ones HostName={hostname}; the "
            f"device SDK's websockets=True dials {AZURE_HTTPS_PORT}. --azure-ports serves "
            "both SDKs on one HostName"
        )
    return notes


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
