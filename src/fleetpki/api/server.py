"""``fleetpki serve``: the HTTPS API and the hub in one event loop on uvloop, per process.

One process by default; ``--workers N`` forks N of them on the same port
(:func:`serve_workers`, supervised by :class:`fleetpki.api.supervisor.Supervisor`).
The *primary* (slot 0, and the one process of ``--workers 1``) also runs the hub's
MQTT listener, the hub links' delivery and the housekeeping, and renews the server
certificate; the other workers serve the API, and MQTT over WebSockets as hub nodes of
their own (``<hub_node>-w<slot>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI

from fleetpki.api.app import create_app
from fleetpki.api.supervisor import Supervisor
from fleetpki.api.tls import http_protocol_class, server_ssl_context
from fleetpki.api.tls_refresher import TLSRefresher
from fleetpki.application import FleetPKI
from fleetpki.errors import ValidationError
from fleetpki.listener import GuardedListener, listening_socket
from fleetpki.services.server_cert import ServerTLSFiles
from fleetpki.settings import DEFAULT_API_PORT, Settings

__all__ = [
    "GuardedServer",
    "HubStarter",
    "Only",
    "PreparedServer",
    "advertised_settings",
    "bind_socket",
    "prepare_server",
    "run_servers",
    "serve",
    "serve_workers",
    "worker_count",
    "worker_settings",
]

Only = Literal["ca", "hub"]
#: Starts the hub's listeners in the running loop and returns a coroutine that stops them.
HubStarter = Callable[[FleetPKI], Awaitable[Callable[[], Awaitable[None]]]]

_log = logging.getLogger("fleetpki.serve")


def bind_socket(host: str, port: int, *, option: str = "--api-port") -> socket.socket:
    """A listening TCP socket on ``host:port`` for the API (port 0 picks a free port).

    ``option`` is the command-line option the error message points to.

    Raises:
        ConflictError: ``serve.port_in_use`` when the port is taken.
        ValidationError: ``serve.privileged_port`` (443 without the privilege: the
            message says how), ``serve.cannot_bind`` for other failures.
    """
    sock = listening_socket(host, port, option=option, fallback=DEFAULT_API_PORT)
    sock.set_inheritable(True)
    return sock


def _port_of(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (80 if parts.scheme == "http" else 443)


def advertised_settings(settings: Settings, api_port: int) -> tuple[Settings, str | None]:
    """The settings to serve ``api_port`` with, and a sentence for the log when they differ.

    The public URL is what certificates (CRL, OCSP, caIssuers) and certificate tokens
    (their audience) name, and ``hub connection-string`` prints the API port, so they
    must name the port clients reach.  A public URL that ``init`` derived from the
    default port follows the served port; one the operator set is kept, since a
    reverse proxy may sit in front of the server.
    """
    if _port_of(settings.public_url) == api_port:
        return settings, None
    if settings.public_url_is_default:
        moved = settings.with_changes(
            public_url=settings.public_url.rsplit(":", 1)[0] + f":{api_port}", api_port=api_port
        )
        return moved, (
            f"public URL is now {moved.public_url}: the default one follows the served port "
            f"(it named {settings.api_port})"
        )
    return settings, (
        f"public URL {settings.public_url} names port {_port_of(settings.public_url)}, not the "
        f"served {api_port}: kept, as for a reverse proxy; if clients reach this port directly, "
        f"set public_url in {settings.config_path}"
    )


@dataclass(frozen=True, slots=True)
class PreparedServer:
    """Everything the API listener needs, made before the event loop starts."""

    app: FastAPI
    tls: ServerTLSFiles
    ssl_context: ssl.SSLContext
    api_socket: socket.socket | None
    tls_refresher: TLSRefresher

    @property
    def api_port(self) -> int | None:
        """The bound API port (useful when asked for port 0)."""
        return self.api_socket.getsockname()[1] if self.api_socket else None


def prepare_server(
    fleet: FleetPKI,
    *,
    host: str,
    api_port: int,
    hostname: str,
    only: Only | None = None,
    api_socket: socket.socket | None = None,
    primary: bool = True,
) -> PreparedServer:
    """Bind the API port, make sure a server certificate exists, build the app.

    The port is bound first, so that a taken port is reported before any work.

    Args:
        fleet: the opened instance.
        host / api_port / hostname: where to listen and the name to certify.
        only: ``ca`` or ``hub`` to run one of them; both by default.
        api_socket: an already listening socket to use instead of binding one.
        primary: ``False`` for an API worker beside the primary: it serves the
            certificate the primary made and reloads it when the primary renews it.

    Raises:
        ConflictError: ``serve.port_in_use``.
    """
    if api_socket is None and only in (None, "ca"):
        api_socket = bind_socket(host, api_port)
    try:
        if primary:
            tls = fleet.server_certificates.ensure(hostname=hostname, host=host)
        else:
            tls = fleet.server_certificates.files()
        context = server_ssl_context(tls.certfile, tls.keyfile, tls.client_ca_file)
        app = create_app(fleet)
    except BaseException:
        if api_socket is not None:
            api_socket.close()
        raise
    refresher = TLSRefresher(
        fleet.server_certificates, hostname=hostname, host=host, issues=primary
    )
    if api_socket is not None:
        refresher.add(context, verifies_clients=True)
    return PreparedServer(app, tls, context, api_socket, refresher)


class GuardedServer(uvicorn.Server):
    """uvicorn's server, accepting through a :class:`~fleetpki.listener.GuardedListener`.

    uvicorn's own ``create_server`` takes no TLS handshake timeout (asyncio's default
    is 60 s) and no cap on connections; the listener gives both. Only the start is
    replaced: uvicorn's main loop and graceful shutdown run as they are, on the
    listener's ``close``/``wait_closed``.

    Args:
        config: uvicorn's configuration (without TLS: the listener does it).
        ssl_context: the API port's TLS context.
        max_connections: open connections allowed at once (``api_max_connections``).
        handshake_timeout: seconds a TLS handshake may take.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        ssl_context: ssl.SSLContext,
        *,
        max_connections: int,
        handshake_timeout: float,
    ) -> None:
        super().__init__(config)
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._handshake_timeout = handshake_timeout

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start a guarded listener on each socket (``serve`` always passes them)."""
        if not sockets:
            raise ValidationError("serve.no_socket", "the API listener needs a bound socket")
        await self.lifespan.startup()
        config = self.config

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        self.servers = [
            GuardedListener(  # type: ignore[misc]
                "API",
                sock,
                create_protocol,
                self._ssl_context,
                max_connections=self._max_connections,
                handshake_timeout=self._handshake_timeout,
                setting="api_max_connections",
            ).start()
            for sock in sockets
        ]
        self.started = True


def _hub_starter() -> HubStarter | None:
    # The hub plugs in here: a module exposing `start_hub(fleet)`.  Until it
    # exists, `serve` runs the CA alone.
    try:
        from fleetpki.hub import server as hub_server  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        return None
    starter = getattr(hub_server, "start_hub", None)
    return starter if callable(starter) else None


async def run_servers(
    prepared: PreparedServer,
    fleet: FleetPKI,
    only: Only | None = None,
    *,
    stop: asyncio.Event | None = None,
    log_level: str = "info",
    primary: bool = True,
    mqtt_socket: socket.socket | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run the API listener (and the hub, when present) in the running event loop.

    Returns when ``stop`` is set or, without one, when uvicorn is told to exit
    (SIGINT/SIGTERM in the main thread).

    Args:
        primary: run the hub's MQTT listener, the hub links and the housekeeping here
            (``False``: an API worker, whose hub node takes MQTT over WebSockets only).
        mqtt_socket: the MQTT port, already bound.
        on_ready: called once every listener accepts connections.

    Raises:
        ValidationError: ``serve.hub_unavailable`` for ``only="hub"`` while the hub
        is not built yet.
    """
    stoppers: list[Callable[[], Awaitable[None]]] = []
    starter = _hub_starter()
    if only == "hub" and starter is None:
        raise ValidationError("serve.hub_unavailable", "the hub is not available yet")
    if starter is not None and only in (None, "hub"):
        if primary:
            stopper = await starter(fleet, sock=mqtt_socket)  # type: ignore[call-arg]
        else:
            stopper = await starter(fleet, listen=False)  # type: ignore[call-arg]
        stoppers.append(stopper)
        # MQTT over WebSockets on the HTTPS port reaches the same broker.
        hub = getattr(stopper, "__self__", None)
        prepared.app.state.hub_broker = getattr(hub, "broker", None)
        prepared.app.state.hub_server = hub
        hub_context = getattr(hub, "ssl_context", None)
        if isinstance(hub_context, ssl.SSLContext):
            # The hub judges client chains itself (fleetpki.hub.tls): certificate only.
            prepared.tls_refresher.add(hub_context, verifies_clients=False)
    links_started = False
    if only in (None, "ca"):
        # Revocations by other processes (another worker, the CLI) reach this one's OCSP
        # cache at once: on PostgreSQL by LISTEN, here in every worker.
        await asyncio.to_thread(fleet.follow_other_processes)
    if only in (None, "ca") and primary:
        # The CA side carries its revocations, renewals and registrations to the
        # linked hubs (fleetpki.services.link_workers).
        await asyncio.to_thread(fleet.link_workers.start)
        links_started = True
    server: uvicorn.Server | None = None
    tasks: list[asyncio.Task[None]] = []
    # Not awaited with the servers: it only ends when cancelled below.
    refreshing = asyncio.create_task(prepared.tls_refresher.run())
    if prepared.api_socket is not None:
        settings = fleet.settings
        config = uvicorn.Config(
            prepared.app,
            http=http_protocol_class(float(settings.http_header_timeout_seconds)),
            lifespan="off",
            log_level=log_level,
            access_log=log_level == "debug",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        server = GuardedServer(
            config,
            prepared.ssl_context,
            max_connections=settings.api_max_connections,
            handshake_timeout=float(settings.tls_handshake_timeout_seconds),
        )
        tasks.append(asyncio.create_task(server.serve(sockets=[prepared.api_socket])))
    try:
        if on_ready is not None:
            while server is not None and not server.started and not any(t.done() for t in tasks):
                await asyncio.sleep(0.02)
            if not any(t.done() for t in tasks):
                on_ready()
        if stop is not None:
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        elif tasks:
            await asyncio.gather(*tasks)
        else:
            await asyncio.Event().wait()
    finally:
        refreshing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refreshing
        if links_started:
            # First: their connectors may hold keep-alive connections to this very API
            # (a link to this hub), which uvicorn's graceful stop would wait for.
            await asyncio.to_thread(fleet.link_workers.stop)
        if server is not None:
            server.should_exit = True
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for stopper in stoppers:
            await stopper()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # Windows has no uvloop
        return asyncio.new_event_loop
    return uvloop.new_event_loop


async def _serve_until_signalled(
    prepared: PreparedServer,
    fleet: FleetPKI,
    only: Only | None,
    *,
    primary: bool = True,
    mqtt_socket: socket.socket | None = None,
    on_ready: Callable[[], None] | None = None,
    log_level: str = "info",
) -> None:
    """:func:`run_servers` until SIGTERM or SIGINT, then a graceful stop.

    uvicorn catches both signals while it serves and raises them again once it has
    stopped; the handler here then sets ``stop``, so the hub still stops (its pending
    telemetry stored, its node's row left) instead of the process dying on the signal.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    try:
        await run_servers(
            prepared,
            fleet,
            only,
            stop=stop,
            log_level=log_level,
            primary=primary,
            mqtt_socket=mqtt_socket,
            on_ready=on_ready,
        )
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def serve(
    fleet: FleetPKI,
    *,
    host: str,
    api_port: int,
    hostname: str,
    only: Only | None = None,
    api_socket: socket.socket | None = None,
) -> None:
    """Run ``fleetpki serve`` until interrupted.

    ``api_socket`` is the API port already bound (by :func:`bind_socket`), when the
    caller had to know that the port is free before acting.

    Raises:
        ConflictError: ``serve.port_in_use``.
        ValidationError: ``serve.hub_unavailable``, ``serve.cannot_bind``.
    """
    if only == "hub" and _hub_starter() is None:
        raise ValidationError("serve.hub_unavailable", "the hub is not available yet")
    prepared = prepare_server(
        fleet, host=host, api_port=api_port, hostname=hostname, only=only, api_socket=api_socket
    )
    if prepared.api_socket is not None:
        _log.info("fleetpki API on https://%s:%s", host, prepared.api_port)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve_until_signalled(prepared, fleet, only))


def worker_count() -> int:
    """The default of ``--workers``: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def worker_settings(settings: Settings, slot: int) -> Settings:
    """The settings of worker ``slot``: each worker beside the primary is a hub node of
    its own (``<hub_node>-w<slot>``), as every hub process on one database must be."""
    if slot == 0:
        return settings
    return settings.with_changes(hub_node=f"{settings.hub_node}-w{slot}")


def serve_workers(
    settings: Settings,
    *,
    workers: int,
    only: Only | None = None,
    api_socket: socket.socket | None,
    mqtt_socket: socket.socket | None = None,
    log_level: str = "info",
    on_started: Callable[[], None] | None = None,
) -> int:
    """Run ``fleetpki serve --workers N``: N processes on the bound sockets; the exit code.

    ``on_started`` is called (in this process) once every worker serves.

    The caller binds the sockets and opens nothing else (no database connection, no
    thread) before this forks; each worker opens the home itself. Slot 0 is the
    primary (:mod:`fleetpki.api.server`'s module docstring); every worker accepts on
    ``api_socket``, the primary alone on ``mqtt_socket``.

    Returns 0 after SIGTERM or SIGINT, 1 when a worker failed to start.
    """

    def run_worker(slot: int, ready: Callable[[], None]) -> int:
        primary = slot == 0
        if not primary and mqtt_socket is not None:
            mqtt_socket.close()
        mine = worker_settings(settings, slot)
        fleet = FleetPKI.open(
            mine,
            migrate=primary,
            database_wait=mine.database_start_wait_seconds,
            on_database_wait=_log.warning,
        )
        try:
            prepared = prepare_server(
                fleet,
                host=mine.host,
                api_port=mine.api_port,
                hostname=mine.hostname,
                only=only,
                api_socket=api_socket,
                primary=primary,
            )
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(
                    _serve_until_signalled(
                        prepared,
                        fleet,
                        only,
                        primary=primary,
                        mqtt_socket=mqtt_socket if primary else None,
                        on_ready=ready,
                        log_level=log_level,
                    )
                )
        finally:
            fleet.close()
        return 0

    return Supervisor(workers, run_worker, on_started=on_started).run()
