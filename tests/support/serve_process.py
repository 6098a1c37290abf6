"""``fleetpki serve`` as users run it: its own process, on a home the test made, on loopback.

`prepare_home` initialises a home on a given database with the API and MQTT ports fixed in
its configuration, trusts the issuing CA in its hub, registers devices with certificates
from that CA, and makes an admin API token. `serve_process` then runs
``python -m fleetpki --home HOME serve`` until the block ends (SIGTERM, as systemd stops
it), with the server's output in ``HOME/../serve.log`` for a failing test to show.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fleetpki.application import init_home
from fleetpki.services.authority import HierarchySpec
from fleetpki.services.context import LOCAL_ADMIN_ID, Actor
from fleetpki.services.hub_devices import DeviceSpec
from fleetpki.settings import Settings
from support.hub import DeviceFiles, issue_device, trust_issuing_ca

__all__ = ["PreparedHome", "free_port", "prepare_home", "serve_environment", "serve_process"]

SRC = Path(__file__).resolve().parents[2] / "src"
_START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class PreparedHome:
    """A home ready to serve.

    Attributes:
        home: the home folder.
        api_port / mqtt_port: the ports in its configuration.
        ca_bundle: the root CA (PEM): what clients trust.
        admin_token: an API token of the local admin.
        devices: the registered devices' files, by device id.
    """

    home: Path
    api_port: int
    mqtt_port: int
    ca_bundle: Path
    admin_token: str
    devices: dict[str, DeviceFiles]

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:<api port>``."""
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def log_path(self) -> Path:
        """Where :func:`serve_process` writes the server's output."""
        return self.home.parent / "serve.log"


def prepare_home(
    folder: Path,
    database_url: str | None,
    device_ids: Sequence[str],
    **settings_changes: object,
) -> PreparedHome:
    """Initialise ``folder/home`` on ``database_url`` (SQLite in the home for ``None``).

    Args:
        folder: an empty folder; the home, device files and the server log go in it.
        database_url: the database; created empty by the caller.
        device_ids: devices to register in the hub with certificates of the issuing CA.
        settings_changes: further settings written to the home's configuration.
    """
    api_port, mqtt_port = free_port(), free_port()
    home = folder / "home"
    settings = Settings.default_for(home, database_url).with_changes(
        host="127.0.0.1",
        public_url=f"https://127.0.0.1:{api_port}",
        api_port=api_port,
        mqtt_port=mqtt_port,
        # Off: its default, 5671, would be shared by every test server running at once.
        **{"amqp_port": -1, **settings_changes},
    )
    fleet = init_home(settings, HierarchySpec()).app
    try:
        trust_issuing_ca(fleet)
        devices = {}
        for device_id in device_ids:
            fleet.hub_devices.put(DeviceSpec(device_id))
            devices[device_id] = issue_device(fleet, device_id, folder / "devices")
        token = fleet.principals.create_token(Actor.local_admin(), LOCAL_ADMIN_ID).secret
        tls = fleet.server_certificates.ensure(hostname="localhost", host="127.0.0.1")
    finally:
        fleet.close()
    return PreparedHome(home, api_port, mqtt_port, tls.ca_bundle, token, devices)


def _wait_listening(process: subprocess.Popen[bytes], ports: Sequence[int], log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    for port in ports:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"fleetpki serve exited ({process.returncode}):\n{_tail(log)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fleetpki serve did not listen:\n{_tail(log)}") from None
                time.sleep(0.05)
    # With several workers (the default on a machine with several cores) the parent
    # binds the ports before any worker accepts on them: serving is when it says so.
    # It says how many it starts before the hub's line, which every run here prints.
    while "fleetpki hub on mqtts://" not in (said := _said(log)) or (
        "worker processes" in said and "worker processes serving" not in said
    ):
        if process.poll() is not None:
            raise RuntimeError(f"fleetpki serve exited ({process.returncode}):\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"fleetpki serve did not start its workers:\n{_tail(log)}")
        time.sleep(0.05)


def _said(log: Path) -> str:
    try:
        return log.read_text(errors="replace")
    except OSError:
        return ""


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def serve_environment() -> dict[str, str]:
    """The environment for a ``fleetpki`` subprocess: the test's, this tree's ``src`` first."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


@contextmanager
def serve_process(prepared: PreparedHome) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``fleetpki serve`` on ``prepared``'s home until the block ends; yield the process.

    Returns once both ports accept connections (and, with several workers, once every
    worker serves). The environment is the test's (the
    key passphrase folder of the session, see tests/conftest.py) with this tree's
    ``src`` first on the path.

    Raises:
        RuntimeError: when the server exits or does not listen within a minute.
    """
    env = serve_environment()
    command = [sys.executable, "-m", "fleetpki", "--home", str(prepared.home), "serve"]
    with prepared.log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
    try:
        _wait_listening(process, [prepared.api_port, prepared.mqtt_port], prepared.log_path)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
