"""Run ``fleetpki serve`` (the CA API and the hub) in a background thread, for the demo."""

from __future__ import annotations

import asyncio
import socket
import threading
from types import TracebackType

import uvloop

from fleetpki.api.server import Only, PreparedServer, bind_socket, prepare_server, run_servers
from fleetpki.application import FleetPKI
from fleetpki.errors import FleetPKIError

__all__ = ["ServerThread", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class ServerThread:
    """The API and hub of ``fleet`` served on their own event loop in a daemon thread.

    The API port is ``fleet.settings.api_port`` and the MQTT port
    ``fleet.settings.mqtt_port``; :meth:`start` returns once both listen.

    Raises:
        FleetPKIError: from :meth:`start`, what the servers failed with.
    """

    def __init__(
        self, fleet: FleetPKI, *, only: Only | None = None, log_level: str = "warning"
    ) -> None:
        self.fleet = fleet
        self.only = only
        self.log_level = log_level
        self.prepared: PreparedServer | None = None
        self._loop = uvloop.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._failure: list[BaseException] = []

    def start(self, timeout: float = 30.0) -> None:
        """Bind, certify and start serving; wait until the API answers."""
        settings = self.fleet.settings
        api_socket = bind_socket(settings.host, settings.api_port) if self.only != "hub" else None
        self.prepared = prepare_server(
            self.fleet,
            host=settings.host,
            api_port=settings.api_port,
            hostname=settings.hostname,
            only=self.only,
            api_socket=api_socket,
        )
        ready = threading.Event()
        prepared = self.prepared

        async def main() -> None:
            self._stop = asyncio.Event()
            self._loop.call_soon(ready.set)
            await run_servers(
                prepared, self.fleet, self.only, stop=self._stop, log_level=self.log_level
            )

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(main())
            except BaseException as exc:  # handed to start() / stop()
                self._failure.append(exc)
                ready.set()
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="fleetpki-serve", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise FleetPKIError("serve.timeout", "the servers did not start in time")
        self._wait_listening(timeout)
        if self._failure:
            raise self._failure[0]

    def _wait_listening(self, timeout: float) -> None:
        settings = self.fleet.settings
        ports = [settings.api_port] if self.only != "hub" else []
        if self.only != "ca":
            ports.append(settings.mqtt_port)
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            for port in ports:
                while not deadline.is_set() and not self._failure:
                    try:
                        socket.create_connection((settings.host, port), timeout=1).close()
                        break
                    except OSError:
                        deadline.wait(0.05)
        finally:
            timer.cancel()

    def refresh_tls(self, timeout: float = 30.0) -> bool:
        """Run the servers' certificate refresh now, as they do every minute.

        Returns ``True`` when a new server certificate was issued and loaded.
        """
        if self.prepared is None or self._thread is None:
            raise FleetPKIError("serve.not_started", "the servers are not running")
        future = asyncio.run_coroutine_threadsafe(self.prepared.tls_refresher.refresh(), self._loop)
        return future.result(timeout)

    def stop(self) -> None:
        """Stop the servers and wait for the thread."""
        if self._thread is None:
            return
        stop_event = self._stop
        if stop_event is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(stop_event.set)
        self._thread.join(timeout=15)
        self._thread = None
        if self.prepared is not None and self.prepared.api_socket is not None:
            self.prepared.api_socket.close()

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
