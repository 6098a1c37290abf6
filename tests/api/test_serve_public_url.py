"""``fleetpki serve --api-port P`` advertises the port it serves, run as a user runs it."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import make_csr
from fleetpki.services import LOCAL_ADMIN_ID

pytestmark = pytest.mark.slow


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPKI_")}
    env["FLEETPKI_HOME"] = str(home)
    return env


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "fleetpki", *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _serving(home: Path, *args: str) -> Iterator[Path]:
    """``fleetpki serve ARGS`` until the block ends; yields the file its stderr goes to."""
    log = home.parent / "serve.log"
    with (
        log.open("w") as sink,
        subprocess.Popen(
            [sys.executable, "-m", "fleetpki", "serve", *args],
            env=_env(home),
            stdout=sink,
            stderr=sink,
        ) as process,
    ):
        try:
            yield log
        finally:
            process.terminate()
            process.wait(30)


def _wait_healthy(url: str, ca_bundle: Path, log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:  # the server writes the bundle as it starts
            context = ssl.create_default_context(cafile=str(ca_bundle))
            if httpx.get(f"{url}/healthz", verify=context, timeout=5).status_code == 200:
                return
        except (OSError, httpx.HTTPError):
            pass
        assert time.monotonic() < deadline, f"the server never answered:\n{log.read_text()}"
        time.sleep(0.2)


def test_a_default_home_served_on_another_port_advertises_that_port(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _cli(home, "init")
    token = _cli(home, "token", "create", "--principal", LOCAL_ADMIN_ID).stdout.strip()
    port, mqtt_port = _free_port(), _free_port()
    url = f"https://127.0.0.1:{port}"
    bundle = home / "tls" / "ca-bundle.pem"
    with _serving(
        home, "--api-port", str(port), "--mqtt-port", str(mqtt_port), "--amqp-port", "0"
    ) as log:
        _wait_healthy(url, bundle, log)
        assert f"public URL is now {url}" in log.read_text()
        assert f"fleetpki portal at {url}/  (sign in with an API token)" in log.read_text()
        config = (home / "config.toml").read_text()
        assert f"api_port = {port}\n" in config and f'public_url = "{url}"' in config

        connection = _cli(home, "hub", "connection-string").stdout
        assert f"HostName=localhost:{port};" in connection

        remote = ["--server", url, "--token", token, "--ca-bundle", str(bundle)]
        _cli(home, *remote, "domain", "register", "dev-port", "--owner", LOCAL_ADMIN_ID)
        key, csr = make_csr("dev-port")
        (tmp_path / "d.csr").write_bytes(csr)
        (tmp_path / "d.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        chain = tmp_path / "d.pem"
        _cli(
            home,
            *remote,
            "cert",
            "request",
            "--domain",
            "dev-port",
            "--csr",
            str(tmp_path / "d.csr"),
            "--out",
            str(chain),
        )
        leaf = x509.load_pem_x509_certificates(chain.read_bytes())[0]
        points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        assert [p.full_name[0].value for p in points if p.full_name] == [  # type: ignore[union-attr]
            f"{url}/crl/{_issuing_ca_id(home)}.crl"
        ]
        # The token's audience is the server's URL; it matches the public URL the
        # server checks, so renewal works without --audience.
        _, new_csr = make_csr("dev-port")
        (tmp_path / "n.csr").write_bytes(new_csr)
        renewed = _cli(
            home,
            *remote,
            "cert",
            "renew",
            "--cert",
            str(chain),
            "--key",
            str(tmp_path / "d.key"),
            "--csr",
            str(tmp_path / "n.csr"),
        )
        assert "renewed: serial" in renewed.stderr


def _issuing_ca_id(home: Path) -> str:
    import json

    cas = json.loads(_cli(home, "ca", "list", "-o", "json").stdout)
    return next(c["id"] for c in cas if c["tier"] == "issuing")


def test_a_public_url_the_operator_set_is_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _cli(home, "init", "--public-url", "https://ca.example.net")
    before = (home / "config.toml").read_text()
    port = _free_port()
    with _serving(home, "--api-port", str(port), "--only", "ca") as log:
        _wait_healthy(f"https://127.0.0.1:{port}", home / "tls" / "ca-bundle.pem", log)
        text = log.read_text()
    assert "public URL https://ca.example.net names port 443, not the served" in text
    assert "kept" in text and "set public_url in" in text
    assert (home / "config.toml").read_text() == before
