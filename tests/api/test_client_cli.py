"""``fleetpki.client`` and the CLI's ``--server`` against a real server over TLS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import make_csr
from fleetpki.client import Client
from fleetpki.errors import AuthenticationError, ConflictError, NotFoundError, PermissionDenied
from fleetpki.services import LOCAL_ADMIN_ID
from support.openssl import verify
from support.pkilint import assert_lints_clean
from support.server import LiveServer, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    saved = os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    with start_server(tmp_path_factory.mktemp("client") / "home") as live:
        yield live
    if saved is not None:
        os.environ["FLEETPKI_KEY_PASSPHRASE"] = saved


def test_client_round_trip(server: LiveServer, tmp_path: Path) -> None:
    with Client(server.base_url, server.admin_token, verify=server.ca_bundle) as client:
        assert client.health()["status"] == "ok"
        cas = client.list_cas()
        assert {c["tier"] for c in cas} == {"root", "issuing"}
        domain = client.register_domain("client-device-1", owners=[LOCAL_ADMIN_ID])
        assert domain["name"] == "client-device-1"
        with pytest.raises(ConflictError) as caught:
            client.register_domain("client-device-1", owners=[LOCAL_ADMIN_ID])
        assert caught.value.code == "domain.exists"
        key, csr = make_csr("client-device-1")
        issued = client.issue_certificate(csr, domain="client-device-1", validity_days=3)
        serial = issued["certificate"]["serial"]
        leaf = x509.load_pem_x509_certificates(issued["chain_pem"].encode())[0]
        assert_lints_clean("certificate", leaf.public_bytes(serialization.Encoding.DER))
        (tmp_path / "leaf.pem").write_text(issued["chain_pem"])
        (tmp_path / "root.pem").write_text(issued["root_pem"])
        issuing = x509.load_pem_x509_certificates(issued["chain_pem"].encode())[1]
        (tmp_path / "issuing.pem").write_bytes(issuing.public_bytes(serialization.Encoding.PEM))
        assert verify(tmp_path / "leaf.pem", tmp_path / "issuing.pem", tmp_path / "root.pem").ok
        assert client.get_certificate(serial)["status"] == "valid"
        assert [c["serial"] for c in client.list_certificates(domain="client-device-1")] == [serial]
        _, new_csr = make_csr("client-device-1")
        renewed = client.renew_certificate(issued["chain_pem"], key, new_csr, validity_days=2)
        assert renewed["certificate"]["renews_serial"] is None  # shown on GET
        assert client.get_certificate(renewed["certificate"]["serial"])["renews_serial"] == serial
        revoked = client.revoke_certificate(serial, "keyCompromise")
        assert revoked["status"] == "revoked" and revoked["revocation_reason"] == "keyCompromise"
        actions = [e["action"] for e in client.audit(object_type="certificate", object_id=serial)]
        assert "certificate.revoke" in actions
        with pytest.raises(NotFoundError):
            client.get_certificate("ABCDEF")
    with (
        Client(server.base_url, "fpk_wrong", verify=server.ca_bundle) as stranger,
        pytest.raises(AuthenticationError),
    ):
        stranger.list_cas()


def test_non_admin_client_gets_permission_denied(server: LiveServer) -> None:
    from fleetpki.services import Actor

    erin = "33333333-3333-4333-8333-333333333333"
    server.fleet.principals.add(Actor.local_admin(), erin, "erin")
    token = server.fleet.principals.create_token(Actor.local_admin(), erin)
    with (
        Client(server.base_url, token.secret, verify=server.ca_bundle) as client,
        pytest.raises(PermissionDenied),
    ):
        client.audit()


def _cli(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPKI_")}
    # A wide terminal, so that Rich prints whole serials in tables.
    env.update(FLEETPKI_TOKEN=server.admin_token, FLEETPKI_HOME="/nonexistent/home", COLUMNS="250")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetpki",
            "--server",
            server.base_url,
            "--ca-bundle",
            str(server.ca_bundle),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_commands_work_remotely(server: LiveServer, tmp_path: Path) -> None:
    listed = _cli(server, "ca", "list")
    assert listed.returncode == 0, listed.stderr
    assert "Issuing CA" in listed.stdout
    done = _cli(server, "domain", "register", "cli-device-1", "--owner", LOCAL_ADMIN_ID)
    assert done.returncode == 0, done.stderr
    assert "cli-device-1" in _cli(server, "domain", "list").stdout
    key, csr = make_csr("cli-device-1")
    (tmp_path / "d.csr").write_bytes(csr)
    (tmp_path / "d.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    issued = _cli(
        server,
        "cert",
        "request",
        "--domain",
        "cli-device-1",
        "--csr",
        str(tmp_path / "d.csr"),
        "--days",
        "2",
        "--out",
        str(tmp_path / "d.pem"),
    )
    assert issued.returncode == 0, issued.stderr
    serial = format(
        x509.load_pem_x509_certificates((tmp_path / "d.pem").read_bytes())[0].serial_number, "X"
    )
    assert serial in _cli(server, "cert", "list", "--domain", "cli-device-1").stdout
    shown = _cli(server, "cert", "show", serial)
    assert "valid" in shown.stdout and "cli-device-1" in shown.stdout
    _, new_csr = make_csr("cli-device-1")
    (tmp_path / "n.csr").write_bytes(new_csr)
    renewed = _cli(
        server,
        "cert",
        "renew",
        "--cert",
        str(tmp_path / "d.pem"),
        "--key",
        str(tmp_path / "d.key"),
        "--csr",
        str(tmp_path / "n.csr"),
        "--out",
        str(tmp_path / "n.pem"),
    )
    assert renewed.returncode == 0, renewed.stderr
    revoked = _cli(server, "cert", "revoke", serial, "--reason", "superseded")
    assert revoked.returncode == 0, revoked.stderr
    again = _cli(server, "cert", "revoke", serial)
    assert again.returncode == 1
    assert "certificate.already_revoked" in again.stderr and "Traceback" not in again.stderr


def test_cli_server_without_token_is_one_line(server: LiveServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPKI_")}
    done = subprocess.run(
        [sys.executable, "-m", "fleetpki", "--server", server.base_url, "ca", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1 and "cli.token_required" in done.stderr


def test_ca_commands_work_remotely(server: LiveServer) -> None:
    with Client(server.base_url, server.admin_token, verify=server.ca_bundle) as client:
        cas = client.list_cas()
        templates = client.list_templates()
    issuing = next(c for c in cas if c["tier"] == "issuing")
    # --output json prints what the API returned, so the field names are the API's.
    assert json.loads(_cli(server, "ca", "list", "-o", "json").stdout) == cas
    shown = _cli(server, "ca", "show", issuing["id"])
    assert shown.returncode == 0, shown.stderr
    assert issuing["sha1"] in shown.stdout and issuing["crl_url"] in shown.stdout
    # ca show adds the CA's generations, as GET /v1/cas/{id}/generations returns them.
    with Client(server.base_url, server.admin_token, verify=server.ca_bundle) as client:
        generations = client.ca_generations(issuing["id"])
    shown_json = json.loads(_cli(server, "ca", "show", issuing["id"], "-o", "json").stdout)
    assert shown_json == issuing | {"generations": generations}
    exported = _cli(server, "ca", "export", issuing["id"])
    assert exported.returncode == 0, exported.stderr
    chain = x509.load_pem_x509_certificates(exported.stdout.encode())
    assert chain[0].serial_number == int(issuing["serial"], 16)
    assert len(chain) == 2
    assert json.loads(_cli(server, "template", "list", "-o", "json").stdout) == templates
    assert templates[0]["id"] in _cli(server, "template", "list").stdout
    missing = _cli(server, "ca", "show", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 1 and "(ca.not_found)" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_remote_json_is_the_api_answer(server: LiveServer) -> None:
    with Client(server.base_url, server.admin_token, verify=server.ca_bundle) as client:
        client.register_domain("json-device-1", owners=[LOCAL_ADMIN_ID])
        _, csr = make_csr("json-device-1")
        serial = client.issue_certificate(csr, domain="json-device-1")["certificate"]["serial"]
        domains = client.list_domains()
        certificate = client.get_certificate(serial)
    assert json.loads(_cli(server, "domain", "list", "-o", "json").stdout) == domains
    listed = json.loads(
        _cli(server, "cert", "list", "--domain", "json-device-1", "-o", "json").stdout
    )
    assert [c["serial"] for c in listed] == [serial]
    assert json.loads(_cli(server, "cert", "show", serial, "-o", "json").stdout) == certificate


def test_commands_without_an_api_route_refuse_server(server: LiveServer) -> None:
    done = _cli(server, "principal", "list")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "`fleetpki principal list`" in line and "--server" in line
    assert "(cli.local_only)" in line


def test_hub_links_work_remotely(server: LiveServer) -> None:
    with Client(server.base_url, server.admin_token, verify=server.ca_bundle) as client:
        issuing = next(c["id"] for c in client.list_cas() if c["tier"] == "issuing")
    added = _cli(server, "hub", "link", "add", "remote-local", "--builtin", "--ca", issuing)
    assert added.returncode == 0, added.stderr
    trusted = _cli(server, "hub", "link", "trust", "remote-local", issuing, "-o", "json")
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["verified"] is True
    with Client(server.base_url, server.admin_token, verify=server.ca_bundle) as client:
        link = client.get_hub_link("remote-local")
        assert client.list_hub_links() == [link]
    shown = _cli(server, "hub", "link", "show", "remote-local", "-o", "json")
    assert json.loads(shown.stdout) == link
    assert link["cas"][0]["verifiedAt"] is not None
    twice = _cli(server, "hub", "link", "add", "remote-local", "--builtin")
    assert twice.returncode == 1 and "(link.exists)" in twice.stderr
    assert _cli(server, "hub", "link", "remove", "remote-local").returncode == 0
    with Client(server.base_url, server.admin_token, verify=server.ca_bundle) as client:
        with pytest.raises(NotFoundError) as caught:
            client.get_hub_link("remote-local")
        assert caught.value.code == "link.not_found"
