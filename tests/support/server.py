"""A real fleetpki server for tests: ``fleetpki serve`` in a thread, on free ports, over TLS."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from fastapi import FastAPI

from fleetpki.api.server import Only, PreparedServer, bind_socket, prepare_server, run_servers
from fleetpki.application import FleetPKI, init_home
from fleetpki.services.authority import HierarchySpec
from fleetpki.services.context import LOCAL_ADMIN_ID, Actor
from fleetpki.settings import Settings

__all__ = ["LiveServer", "start_server"]


@dataclass(frozen=True, slots=True)
class LiveServer:
    """A running server.

    Attributes:
        base_url: ``https://127.0.0.1:<port>``; also the certificate-token audience.
        ca_bundle: the root CA in PEM: what clients trust.
        admin_token: an API token of the local admin.
        fleet: the instance the server runs against (same database).
        prepared: the app, TLS files and socket.
        loop: the event loop the server runs on (to run a coroutine there).
    """

    base_url: str
    ca_bundle: Path
    admin_token: str
    fleet: FleetPKI
    prepared: PreparedServer
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        """The API port."""
        port = self.prepared.api_port
        assert port is not None
        return port

    def _hub(self) -> Any:
        deadline = time.monotonic() + 20
        while (hub := getattr(self.prepared.app.state, "hub_server", None)) is None:
            assert time.monotonic() < deadline, "the hub did not start"
            time.sleep(0.01)
        return hub

    @property
    def mqtt_port(self) -> int:
        """The hub's MQTT/TLS port."""
        return int(self._hub().port)

    @property
    def amqp_port(self) -> int:
        """The hub's AMQP/TLS port."""
        hub = self._hub()
        assert hub.amqp is not None, "the AMQP listener is off"
        return int(hub.amqp.port)


@contextmanager
def start_server(
    home: Path,
    *,
    only: Only | None = None,
    database_url: str | None = None,
    configure: Callable[[FastAPI], None] | None = None,
    existing: bool = False,
    **settings_changes: object,
) -> Iterator[LiveServer]:
    """Initialise a home in ``home`` and serve it on a free port until the block ends.

    Args:
        home: an empty folder for the new home.
        only: as ``fleetpki serve --only``.
        database_url: a database; SQLite in the home by default.
        configure: called with the app before serving (tests add probe routes).
        existing: serve the home a previous `start_server` made in ``home`` (a restart).
        settings_changes: further settings (``oidc_issuer``, ...).
    """
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    base_url = f"https://127.0.0.1:{port}"
    base = Settings.load(home) if existing else Settings.default_for(home, database_url)
    settings = base.with_changes(
        public_url=base_url, api_port=port, **{"mqtt_port": 0, "amqp_port": 0, **settings_changes}
    )
    fleet = FleetPKI.open(settings) if existing else init_home(settings, HierarchySpec()).app
    admin = fleet.principals.create_token(Actor.local_admin(), LOCAL_ADMIN_ID)
    prepared = prepare_server(
        fleet, host="127.0.0.1", api_port=port, hostname="localhost", only=only, api_socket=sock
    )
    if configure is not None:
        configure(prepared.app)
    loop = uvloop.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(
                run_servers(
                    prepared, fleet, only, stop=stop, log_level="warning", on_ready=ready.set
                )
            )
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name=f"fleetpki-serve-{port}", daemon=True)
    thread.start()
    # Every listener accepts before the test starts: the API socket is bound above, but
    # the hub's MQTT port only once the hub has started in the thread.
    while not ready.wait(0.05):
        if not thread.is_alive():
            break
    try:
        if failure:
            raise failure[0]
        yield LiveServer(base_url, prepared.tls.ca_bundle, admin.secret, fleet, prepared, loop)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=15)
        sock.close()
        fleet.close()
    if failure:
        raise failure[0]
