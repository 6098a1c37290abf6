"""The real server over TLS: health, docs, metrics, client certificates via curl, a taken port."""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI, Request

from conftest import make_csr
from fleetpki.api.server import bind_socket
from fleetpki.api.tls import client_certificate_der
from fleetpki.errors import ConflictError
from fleetpki.pki.issuance import thumbprints
from fleetpki.services import LOCAL_ADMIN_ID, Actor
from fleetpki.services.certificates import IssueCommand
from support.openssl import verify
from support.pkilint import lint
from support.server import LiveServer, start_server

pytestmark = pytest.mark.slow


def _probe(app: FastAPI) -> None:
    def whoami(request: Request) -> dict[str, str | None]:
        der = client_certificate_der(request)
        return {"sha1": thumbprints(der)[0] if der else None}

    app.add_api_route("/test/client-certificate", whoami, methods=["GET"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    saved = os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    with start_server(tmp_path_factory.mktemp("serve") / "home", configure=_probe) as live:
        yield live  # type: ignore[misc]
    if saved is not None:
        os.environ["FLEETPKI_KEY_PASSPHRASE"] = saved


def _client(server: LiveServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, verify=ssl.create_default_context(cafile=str(server.ca_bundle))
    )


def test_health_docs_and_openapi_over_tls(server: LiveServer) -> None:
    with _client(server) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        spec = client.get("/openapi.json").json()
        assert "/api/CA/RequestSSLCertificate" in spec["paths"]
        assert "/v1/certificates" in spec["paths"]
        assert client.get("/docs").status_code == 200


def test_server_certificate_names_localhost_and_lints(server: LiveServer) -> None:
    pem = server.prepared.tls.certfile.read_bytes()
    leaf, _issuing = x509.load_pem_x509_certificates(pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    # pkilint holds a single-label DNS name invalid; DNS:localhost is there on purpose
    # (clients connecting to https://localhost match it), and is the only finding.
    findings = lint("certificate", leaf.public_bytes(serialization.Encoding.DER))
    assert [f for f in findings if '"localhost"' not in f] == [], findings
    # Clients check the name: https://localhost works as well as the IP.
    context = ssl.create_default_context(cafile=str(server.ca_bundle))
    with httpx.Client(verify=context) as client:
        assert client.get(f"https://localhost:{server.port}/healthz").status_code == 200


def test_metrics_count_issuances_and_refusals(server: LiveServer) -> None:
    with _client(server) as client:
        client.get("/v1/cas", headers={"Authorization": "Bearer fpk_nope"})
        text = client.get("/metrics").text
    assert 'fleetpki_refusals_total{code="auth.bad_token"}' in text
    assert "fleetpki_ca_not_after_timestamp_seconds{" in text
    assert "fleetpki_http_request_duration_seconds_bucket{" in text
    issuing = next(c for c in server.fleet.cas.list() if c.tier == "issuing")
    days = re.search(rf'fleetpki_ca_days_to_expiry{{ca_id="{issuing.id}",[^}}]*}} (\S+)', text)
    assert days is not None and 5 * 365 - 2 < float(days[1]) <= 5 * 365


def test_metrics_show_a_generation_waiting_for_its_hub_links(server: LiveServer) -> None:
    from fleetpki.services.ca_lifecycle import RenewCommand
    from fleetpki.services.hub_links import link_command

    fleet, admin = server.fleet, Actor.local_admin()
    issuing = next(c for c in fleet.cas.list() if c.tier == "issuing")
    # A link whose hub cannot be reached: the new generation waits for it.
    fleet.hub_links.add(
        admin,
        link_command(
            "unreachable", "azure", ca_ids=[issuing.id],
            subscription_id="5b6c8a8e-3f0e-4c5e-9a53-2c1f7b1f0d9e", resource_group="rg",
            hub_name="gone", management_url="https://127.0.0.1:9", service_url="https://127.0.0.1:9",
            credential="connection-string",
            secret="HostName=gone.example;SharedAccessKeyName=o;SharedAccessKey=c2VjcmV0",
        ),
    )  # fmt: skip
    fleet.ca_lifecycle.renew(admin, issuing.id, RenewCommand(rekey=False))
    with _client(server) as client:
        text = client.get("/metrics").text
    assert (
        f'fleetpki_ca_pending_generation_age_seconds{{ca_id="{issuing.id}",generation="2",'
        'pending_links="unreachable"}' in text
    )


def _device_certificate(server: LiveServer, tmp_path: Path, device: str) -> tuple[Path, Path]:
    fleet, admin = server.fleet, Actor.local_admin()
    key, csr = make_csr(device)
    ca_id = next(c.id for c in fleet.cas.list() if c.tier == "issuing")
    fleet.domains.register(
        admin, ca_id=ca_id, template_id=None, name=device, owners=[LOCAL_ADMIN_ID], requesters=[]
    )
    issued = fleet.certificates.issue(admin, IssueCommand(ca_id=ca_id, csr=csr))
    cert_path, key_path = tmp_path / "device.pem", tmp_path / "device.key"
    cert_path.write_text(issued.pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_client_certificate_reaches_routes_with_curl(server: LiveServer, tmp_path: Path) -> None:
    cert_path, key_path = _device_certificate(server, tmp_path, "curl-device-1")
    url = f"{server.base_url}/test/client-certificate"
    with_cert = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            str(server.ca_bundle),
            "--cert",
            str(cert_path),
            "--key",
            str(key_path),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    expected = thumbprints(
        x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
    )[0]
    assert f'"sha1":"{expected}"' in with_cert.stdout
    without = subprocess.run(
        ["curl", "-sS", "--cacert", str(server.ca_bundle), url],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert '"sha1":null' in without.stdout


def test_a_certificate_from_elsewhere_is_refused_in_the_handshake(
    server: LiveServer, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "s.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "s.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            str(server.ca_bundle),
            "--cert",
            str(tmp_path / "s.pem"),
            "--key",
            str(tmp_path / "s.key"),
            f"{server.base_url}/healthz",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0


def test_a_taken_port_is_a_clear_error(server: LiveServer) -> None:
    with pytest.raises(ConflictError) as caught:
        bind_socket("127.0.0.1", server.port)
    assert caught.value.code == "serve.port_in_use"


def test_cli_serve_on_a_taken_port_prints_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "FLEETPKI_HOME": str(home)}
    env.pop("FLEETPKI_KEY_PASSPHRASE", None)
    subprocess.run(
        [sys.executable, "-m", "fleetpki", "init"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "fleetpki", "serve", "--api-port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert (
        lines[-1].startswith("error:")
        and "already in use" in lines[-1]
        and "serve.port_in_use" in lines[-1]
    )
    assert "Traceback" not in done.stderr


def test_only_hub_runs_the_hub_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "FLEETPKI_HOME": str(home)}
    env.pop("FLEETPKI_KEY_PASSPHRASE", None)
    subprocess.run(
        [sys.executable, "-m", "fleetpki", "init"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    mqtt_port = probe.getsockname()[1]
    probe.close()
    command = [sys.executable, "-m", "fleetpki", "serve", "--only", "hub"]
    with subprocess.Popen(
        [*command, "--mqtt-port", str(mqtt_port), "--amqp-port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stderr is not None
            first = process.stderr.readline()
            if first.startswith("warning: the open files limit"):
                # A machine whose hard limit is below the caps' need (this one: 20,000).
                first = process.stderr.readline()
            assert "hub on mqtts://127.0.0.1" in first
            deadline = time.monotonic() + 60
            while True:  # the line is printed just before the hub binds
                try:
                    socket.create_connection(("127.0.0.1", mqtt_port), timeout=5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the hub never listened"
                    time.sleep(0.1)
        finally:
            process.terminate()
            process.wait(30)


def test_server_chain_verifies_with_openssl(server: LiveServer, tmp_path: Path) -> None:
    leaf, issuing = x509.load_pem_x509_certificates(server.prepared.tls.certfile.read_bytes())
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "issuing.pem").write_bytes(issuing.public_bytes(serialization.Encoding.PEM))
    result = verify(
        tmp_path / "leaf.pem", tmp_path / "issuing.pem", server.ca_bundle, purpose="sslserver"
    )
    assert result.ok, result.output
