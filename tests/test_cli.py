"""The ``fleetpki`` command, run as a user runs it: a subprocess against a real home."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fleetpki.api.ca_lifecycle import GenerationOut
from fleetpki.api.v1_models import CAOut, CertificateOut, DomainOut, TemplateOut
from support.openssl import verify
from support.pkilint import assert_lints_clean
from support.postgres import PostgresServer

OWNER = "11111111-1111-4111-8111-111111111111"
FLEETPKI = str(Path(sys.executable).parent / "fleetpki")


def run(
    home: Path, *args: str, ok: bool = True, stdin: str | None = None, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLEETPKI_KEY_PASSPHRASE"}
    env.update(FLEETPKI_HOME=str(home), COLUMNS=str(columns))
    done = subprocess.run(
        [FLEETPKI, *args], env=env, capture_output=True, text=True, input=stdin, timeout=120
    )
    if ok:
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def openssl_csr(tmp: Path, cn: str, name: str, key: str = "ec") -> tuple[Path, Path]:
    newkey = (
        ["-newkey", "rsa:2048"]
        if key == "rsa"
        else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    )
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            *newkey,
            "-nodes",
            "-keyout",
            str(tmp / f"{name}.key"),
            "-subj",
            f"/CN={cn}",
            "-out",
            str(tmp / f"{name}.csr"),
        ],
        check=True,
        capture_output=True,
    )
    return tmp / f"{name}.key", tmp / f"{name}.csr"


def _split_chain(path: Path) -> tuple[Path, Path]:
    text = path.read_text()
    marker = "-----END CERTIFICATE-----\n"
    leaf, issuing = text.split(marker)[0] + marker, text.split(marker)[1] + marker
    (path.parent / "leaf.pem").write_text(leaf)
    (path.parent / "issuing.pem").write_text(issuing)
    return path.parent / "leaf.pem", path.parent / "issuing.pem"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_the_whole_cli_flow(home: Path, tmp_path: Path) -> None:
    out = run(home, "init").stdout
    assert "root CA" in out and "issuing CA" in out
    again = run(home, "init", ok=False)
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr and "(home.exists)" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    run(home, "principal", "add", OWNER, "--name", "factory line 1")
    token = run(home, "token", "create", "--principal", OWNER).stdout.strip()
    assert token.startswith("fpk_") and len(token) > 40
    database = (home / "fleetpki.db").read_bytes() + b"".join(
        p.read_bytes() for p in home.glob("fleetpki.db-*")
    )
    assert token.encode() not in database

    run(home, "domain", "register", "dev-001", "--owner", OWNER, "--requester", OWNER)
    assert "dev-001" in run(home, "domain", "list").stdout

    key, csr = openssl_csr(tmp_path, "dev-001", "dev", key="rsa")
    chain = tmp_path / "dev.pem"
    issued = run(
        home,
        "cert",
        "request",
        "--domain",
        "dev-001",
        "--csr",
        str(csr),
        "--days",
        "5",
        "--out",
        str(chain),
    )
    serial = issued.stderr.split("serial ")[1].split()[0]
    leaf, issuing = _split_chain(chain)
    root = tmp_path / "root.pem"
    ca_ids = [
        line.split()[0] for line in run(home, "ca", "list").stdout.splitlines() if "Root CA" in line
    ]
    run(home, "ca", "export", ca_ids[0], "--out", str(root))
    result = verify(leaf, issuing, root, purpose="sslclient")
    assert result.ok, result.output
    der = subprocess.run(
        ["openssl", "x509", "-in", str(leaf), "-outform", "DER"], capture_output=True, check=True
    ).stdout
    assert_lints_clean("certificate", der)

    assert serial in run(home, "cert", "list", "--expiring", "7d").stdout
    assert serial not in run(home, "cert", "list", "--expiring", "2d").stdout
    shown = run(home, "cert", "show", serial).stdout
    assert "CN=dev-001" in shown and "valid" in shown

    _, new_csr = openssl_csr(tmp_path, "dev-001", "dev2")
    renewed = tmp_path / "dev2.pem"
    run(
        home,
        "cert",
        "renew",
        "--cert",
        str(chain),
        "--key",
        str(key),
        "--csr",
        str(new_csr),
        "--out",
        str(renewed),
    )
    new_serial = run(home, "cert", "list", "--status", "valid").stdout
    assert new_serial.count("dev-001") == 2

    run(home, "cert", "revoke", serial, "--reason", "keyCompromise")
    twice = run(home, "cert", "revoke", serial, "--reason", "keyCompromise", ok=False)
    assert twice.returncode == 1 and "(certificate.already_revoked)" in twice.stderr
    assert "keyCompromise" in run(home, "cert", "show", serial).stdout
    refused = run(
        home,
        "cert",
        "renew",
        "--cert",
        str(chain),
        "--key",
        str(key),
        "--csr",
        str(new_csr),
        ok=False,
    )
    assert "(certificate.revoked)" in refused.stderr


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["cert", "show", "ABCDEF"], "certificate.not_found"),
        (["cert", "revoke", "ABCDEF", "--reason", "becauseISaidSo"], "revocation.bad_reason"),
        (["cert", "list", "--expiring", "soon"], "cli.bad_duration"),
        (["cert", "list", "--status", "weird"], "certificate.bad_status"),
        (["principal", "add", "not-a-guid", "--name", "x"], "principal.bad_id"),
        (
            ["domain", "register", "dev-9", "--owner", "22222222-2222-4222-8222-222222222222"],
            "principal.not_found",
        ),
        (
            ["cert", "request", "--domain", "nope", "--csr", "/nonexistent.csr"],
            "cli.unreadable_file",
        ),
        (["ca", "show", "not-an-id"], "ca.not_found"),
    ],
)
def test_errors_are_one_clear_line(home: Path, args: list[str], code: str) -> None:
    run(home, "init")
    done = run(home, *args, ok=False)
    assert done.returncode == 1
    assert f"({code})" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_commands_on_a_missing_home_name_the_problem(home: Path) -> None:
    done = run(home, "ca", "list", ok=False)
    assert done.returncode == 1 and "fleetpki init" in done.stderr


def test_init_options_choose_key_types(home: Path) -> None:
    run(
        home,
        "init",
        "--root-key",
        "rsa-3072",
        "--issuing-key",
        "ec-p384",
        "--max-validity-days",
        "30",
    )
    listing = run(home, "ca", "list").stdout
    assert "rsa-3072" in listing and "ec-p384" in listing
    assert "30" in run(home, "template", "list").stdout
    bad = run(home.parent / "other", "init", "--issuing-key", "ed25519", ok=False)
    assert "(ca.bad_key_type)" in bad.stderr
    assert not (home.parent / "other" / "config.toml").exists()


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["init"],
        ["ca"],
        ["ca", "export"],
        ["cert"],
        ["cert", "request"],
        ["cert", "renew"],
        ["cert", "revoke"],
        ["domain", "register"],
        ["token", "create"],
        ["principal", "add"],
        ["template", "list"],
    ],
)
def test_help_everywhere(home: Path, command: list[str]) -> None:
    done = run(home, *command, "--help")
    assert "Usage:" in done.stdout


@pytest.mark.postgres
def test_init_on_postgresql(home: Path, tmp_path: Path, postgres: PostgresServer) -> None:
    url = postgres.create_database("cli_init")
    run(home, "init", "--database-url", url)
    assert "postgresql" in (home / "config.toml").read_text()
    assert not (home / "fleetpki.db").exists()
    run(home, "principal", "add", OWNER, "--name", "pg owner")
    run(home, "domain", "register", "dev-pg", "--owner", OWNER, "--requester", OWNER)
    _, csr = openssl_csr(tmp_path, "dev-pg", "pg")
    run(home, "cert", "request", "--domain", "dev-pg", "--csr", str(csr))
    assert "dev-pg" in run(home, "cert", "list").stdout


def test_sqlite_database_has_no_private_key_material(home: Path) -> None:
    run(home, "init")
    with sqlite3.connect(home / "fleetpki.db") as conn:
        dumped = "\n".join(conn.iterdump())
    assert "PRIVATE KEY" not in dumped
    assert shutil.which("openssl")


def test_usage_errors_exit_2_without_a_traceback(home: Path) -> None:
    done = run(home, "cert", "show", ok=False)
    assert done.returncode == 2
    assert "Missing argument" in done.stderr
    assert "Traceback" not in done.stderr


def test_version(home: Path) -> None:
    assert run(home, "--version").stdout.startswith("fleetpki ")


def _issued_home(home: Path, tmp_path: Path) -> str:
    """A home with a principal, a domain and one certificate; returns its serial."""
    run(home, "init")
    run(home, "principal", "add", OWNER, "--name", "factory line 1 with a long name")
    run(home, "domain", "register", "dev-001", "--owner", OWNER, "--requester", OWNER)
    _, csr = openssl_csr(tmp_path, "dev-001", "dev")
    issued = run(home, "cert", "request", "--domain", "dev-001", "--csr", str(csr))
    return issued.stderr.split("serial ")[1].split()[0]


def test_ids_serials_and_thumbprints_stay_whole_in_80_columns(home: Path, tmp_path: Path) -> None:
    serial = _issued_home(home, tmp_path)
    cas = json.loads(run(home, "ca", "list", "-o", "json").stdout)
    (cert,) = json.loads(run(home, "cert", "list", "-o", "json").stdout)
    (template,) = json.loads(run(home, "template", "list", "-o", "json").stdout)
    (domain,) = json.loads(run(home, "domain", "list", "-o", "json").stdout)
    expected = {
        ("ca", "list"): [c["id"] for c in cas],
        ("cert", "list"): [serial, cert["sha1"]],
        ("template", "list"): [template["id"], template["ca_id"]],
        ("domain", "list"): [domain["id"], domain["ca_id"], OWNER],
        ("principal", "list"): [OWNER],
        ("cert", "show", serial): [serial, cert["sha1"], cert["sha256"], cert["ca_id"]],
        ("ca", "show", cas[0]["id"]): [cas[0]["id"], cas[0]["serial"], cas[0]["sha1"]],
    }
    for command, values in expected.items():
        # Through a pipe (capture_output) with an 80-column terminal's COLUMNS.
        lines = run(home, *command, columns=80).stdout.splitlines()
        for value in values:
            assert any(value in line for line in lines), (
                f"{command}: {value} folded:\n" + "\n".join(lines)
            )


def test_json_output_has_the_api_field_names(home: Path, tmp_path: Path) -> None:
    serial = _issued_home(home, tmp_path)
    cas = json.loads(run(home, "ca", "list", "-o", "json").stdout)
    assert len(cas) == 2
    assert all(set(c) == set(CAOut.model_fields) for c in cas)
    shown = json.loads(run(home, "ca", "show", cas[1]["id"], "--output", "json").stdout)
    generations = shown.pop("generations")
    assert shown == cas[1]
    assert [set(g) for g in generations] == [set(GenerationOut.model_fields)]
    (template,) = json.loads(run(home, "template", "list", "-o", "json").stdout)
    assert set(template) == set(TemplateOut.model_fields)
    (domain,) = json.loads(run(home, "domain", "list", "-o", "JSON").stdout)
    assert set(domain) == set(DomainOut.model_fields)
    assert domain["owners"] == [OWNER] and domain["name"] == "dev-001"
    (listed,) = json.loads(run(home, "cert", "list", "-o", "json").stdout)
    assert set(listed) == set(CertificateOut.model_fields)
    cert = json.loads(run(home, "cert", "show", serial, "-o", "json").stdout)
    assert cert == listed and cert["serial"] == serial and cert["status"] == "valid"
    principals = json.loads(run(home, "principal", "list", "-o", "json").stdout)
    assert {p["id"] for p in principals} >= {OWNER}
    run(home, "hub", "device", "add", "dev-001")
    (device,) = json.loads(run(home, "hub", "device", "list", "-o", "json").stdout)
    assert (
        device["deviceId"] == "dev-001"
        and device["authentication"]["type"] == "certificateAuthority"
    )
    twin = json.loads(run(home, "hub", "device", "show", "dev-001", "-o", "json").stdout)
    assert twin["deviceId"] == "dev-001" and "properties" in twin
    assert "dev-001" in run(home, "hub", "device", "show", "dev-001").stdout
    bad = run(home, "ca", "list", "-o", "yaml", ok=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["init"],
        ["serve"],
        ["principal", "list"],
        ["principal", "add", OWNER, "--name", "x"],
        ["token", "create", "--principal", OWNER],
        ["hub", "device", "list"],
        ["hub", "trust", "4215cd17-4e34-4a99-973e-feca02f3b8eb"],
        ["hub", "connection-string"],
    ],
)
def test_commands_without_an_api_route_refuse_server(home: Path, command: list[str]) -> None:
    done = run(home, "--server", "https://127.0.0.1:9", "--token", "fpk_x", *command, ok=False)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "--server" in line and "(cli.local_only)" in line
    assert not (home / "config.toml").exists()


def test_tokens_are_listed_without_secrets_and_revoked(home: Path) -> None:
    run(home, "init")
    run(home, "principal", "add", OWNER, "--name", "alice")
    created = run(home, "token", "create", "--principal", OWNER, "--name", "laptop")
    secret = created.stdout.strip()
    listed = json.loads(run(home, "token", "list", "--output", "json").stdout)
    (token,) = [t for t in listed if t["principal_id"] == OWNER]
    assert token["name"] == "laptop" and secret.startswith(token["prefix"])
    assert secret not in json.dumps(listed) and token["revoked_at"] is None

    done = run(home, "token", "revoke", token["id"])
    assert f"token {token['id']} of {OWNER} is revoked" in done.stdout
    listed = json.loads(run(home, "token", "list", "--principal", OWNER, "-o", "json").stdout)
    assert listed[0]["revoked_at"] is not None
    table = run(home, "token", "list").stdout
    assert token["id"] in table and "laptop" in table

    unknown = run(home, "token", "revoke", "00000000-0000-4000-8000-000000000000", ok=False)
    assert unknown.returncode == 1 and "(token.not_found)" in unknown.stderr
