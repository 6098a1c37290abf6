"""``fleetpki hub show`` and ``fleetpki hub link``, run as a user runs them, on a real home."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from fleetpki.api.hub_links import HubLinkOut
from test_cli import run

SUBSCRIPTION = "5b6c8a8e-3f0e-4c5e-9a53-2c1f7b1f0d9e"
SECRET = "client-secret-value-42"


def _refused(home: Path, *args: str, code: str, status: int = 1) -> None:
    done = run(home, *args, ok=False)
    assert done.returncode == status, done.stderr
    assert f"({code})" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _links(home: Path) -> list[dict[str, object]]:
    return json.loads(run(home, "hub", "link", "list", "-o", "json").stdout)  # type: ignore[no-any-return]


def test_hub_show_names_the_hub_as_azure_does(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "init")
    identity = json.loads(run(home, "hub", "show", "-o", "json").stdout)
    assert identity["resourceId"] == (
        f"/subscriptions/{identity['subscriptionId']}/resourceGroups/"
        f"{identity['resourceGroup']}/providers/Microsoft.Devices/IotHubs/{identity['hubName']}"
    )
    assert identity["managementUrl"].startswith("https://")
    assert identity["authorityHost"] is None  # the token endpoint is off by default
    text = run(home, "hub", "show").stdout
    for key in ("subscriptionId", "resourceGroup", "hubName"):
        assert identity[key] in text


def test_link_add_list_show_trust_and_remove(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "init")
    cas = json.loads(run(home, "ca", "list", "-o", "json").stdout)
    issuing = next(c["id"] for c in cas if c["tier"] == "issuing")

    run(home, "hub", "link", "add", "local", "--builtin", "--ca", issuing)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    run(
        home,
        "hub", "link", "add", "gov", "--azure",
        "--subscription", SUBSCRIPTION, "--resource-group", "rg-fleet", "--hub", "gov-hub",
        "--management-url", "https://management.usgovcloudapi.net",
        "--credential", "client-secret", "--tenant", "contoso.onmicrosoft.us",
        "--client-id", "0b8d2f6e-1c3a-4f5e-8d7c-6b5a4f3e2d1c",
        "--authority-host", "login.microsoftonline.us",
        "--secret-file", str(secret_file), "--no-disable-on-revoke", "--register-devices",
    )  # fmt: skip

    links = _links(home)
    assert [link["name"] for link in links] == ["gov", "local"]
    for link in links:
        HubLinkOut.model_validate(link)
    gov = json.loads(run(home, "hub", "link", "show", "gov", "-o", "json").stdout)
    assert gov["azure"]["authorityHost"] == "https://login.microsoftonline.us"
    assert (gov["disableOnRevoke"], gov["registerDevices"], gov["hasSecret"]) == (
        False,
        True,
        True,
    )
    shown = run(home, "hub", "link", "show", "gov")
    assert "gov-hub" in shown.stdout and "stored, encrypted" in shown.stdout
    table = run(home, "hub", "link", "list", columns=80).stdout
    assert "gov-hub" in table and "local" in table
    everything = [shown.stdout, shown.stderr, table, json.dumps(links)]
    with sqlite3.connect(home / "fleetpki.db") as db:
        everything += [str(row) for row in db.execute("SELECT * FROM hub_links")]
        everything += [str(row) for row in db.execute("SELECT * FROM audit_log")]
    assert not any(SECRET in text for text in everything)

    trusted = json.loads(run(home, "hub", "link", "trust", "local", issuing, "-o", "json").stdout)
    assert trusted["verified"] is True
    again = run(home, "hub", "link", "trust", "local", issuing)
    assert "verified" in again.stderr and trusted["certificateName"] in again.stderr
    [entry] = json.loads(run(home, "hub", "link", "show", "local", "-o", "json").stdout)["cas"]
    assert entry["thumbprint"] == trusted["thumbprint"]

    run(home, "hub", "link", "remove", "gov")
    assert [link["name"] for link in _links(home)] == ["local"]


def test_link_refusals_change_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "init")
    run(home, "hub", "link", "add", "local", "--builtin")
    before = _links(home)

    _refused(home, "hub", "link", "add", "local", "--builtin", code="link.exists")
    _refused(
        home, "hub", "link", "add", "x", "--builtin", "--ca",
        "00000000-0000-4000-8000-00000000dead", code="ca.not_found",
    )  # fmt: skip
    _refused(
        home, "hub", "link", "add", "x", "--azure", "--subscription", "not-a-guid",
        "--resource-group", "rg", "--hub", "hub", code="link.bad_subscription",
    )  # fmt: skip
    _refused(home, "hub", "link", "add", "x", "--azure", code="link.target_incomplete")
    _refused(
        home, "hub", "link", "add", "x", "--builtin", "--azure", code="cli.link_kind", status=2
    )
    _refused(home, "hub", "link", "show", "nope", code="link.not_found")
    _refused(home, "hub", "link", "trust", "nope", "x", code="link.not_found")
    assert _links(home) == before


def _pem_bundle(path: Path) -> Path:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "private hub CA")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def test_link_status_shows_failed_deliveries_and_retry_requeues_them(
    tmp_path: Path, key_passphrase: None
) -> None:
    import time

    from fleetpki.application import FleetPKI
    from fleetpki.pki.revocation import RevocationReason
    from fleetpki.services import Actor
    from fleetpki.services.delivery import Backoff
    from fleetpki.services.link_workers import LinkWorkers
    from fleetpki.settings import Settings
    from support.hub_control import issue_device_certificate

    home = tmp_path / "home"
    run(home, "init")
    cas = json.loads(run(home, "ca", "list", "-o", "json").stdout)
    issuing = next(c["id"] for c in cas if c["tier"] == "issuing")
    secret_file = tmp_path / "secret"
    secret_file.write_text("HostName=h.example;SharedAccessKeyName=owner;SharedAccessKey=c2VjcmV0")
    bundle = _pem_bundle(tmp_path / "bundle.pem")
    run(
        home,
        "hub", "link", "add", "down", "--azure", "--ca", issuing,
        "--subscription", SUBSCRIPTION, "--resource-group", "rg", "--hub", "down-hub",
        "--credential", "connection-string", "--secret-file", str(secret_file),
        "--service-url", "https://127.0.0.1:9/", "--ca-bundle", str(bundle),
    )  # fmt: skip
    shown = json.loads(run(home, "hub", "link", "show", "down", "-o", "json").stdout)
    assert shown["azure"]["serviceUrl"] == "https://127.0.0.1:9"
    assert shown["azure"]["caBundle"] == str(bundle.resolve())
    assert "127.0.0.1:9" in run(home, "hub", "link", "show", "down").stdout

    # What `fleetpki serve` would do, with a short patience: revoke, fail twice, give up.
    fleet = FleetPKI.open(Settings.load(home))
    try:
        serial = issue_device_certificate(fleet, "dev-cli")[2].serial_hex
        fleet.certificates.revoke(Actor.local_admin(), serial, RevocationReason.KEY_COMPROMISE)
        workers = LinkWorkers(
            fleet.hub_links,
            fleet.store,
            fleet.now,
            fleet.events,
            fleet.keystore,
            start_consumer=fleet.start_consumer,
            stop_consumer=fleet.stop_consumer,
            max_attempts=2,
            backoff=Backoff(base=0.02, cap=0.05),
        )
        workers.start()
        deadline = time.monotonic() + 20
        while fleet.hub_links.status(Actor.local_admin(), "down")[0].backlog.failed < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        workers.stop()
    finally:
        fleet.close()

    [status] = json.loads(run(home, "hub", "link", "status", "-o", "json").stdout)
    assert (status["link"], status["pending"], status["failed"]) == ("down", 0, 1)
    [failed] = status["failedDeliveries"]
    assert (failed["eventType"], failed["subject"]) == ("certificate.revoked", serial)
    assert "link.unreachable" in failed["lastError"]
    text = run(home, "hub", "link", "status", "down")
    assert "certificate.revoked" in text.stdout and "hub link retry" in text.stderr

    retried = run(home, "hub", "link", "retry", "down")
    assert "down: 1 delivery(ies) requeued" in retried.stderr
    [after] = json.loads(run(home, "hub", "link", "status", "down", "-o", "json").stdout)
    assert (after["pending"], after["failed"], after["failedDeliveries"]) == (1, 0, [])
    _refused(home, "hub", "link", "status", "nope", code="link.not_found")
    _refused(home, "hub", "link", "retry", "nope", code="link.not_found")
    _refused(
        home, "hub", "link", "add", "x", "--azure", "--subscription", SUBSCRIPTION,
        "--resource-group", "rg", "--hub", "hub", "--ca-bundle", str(secret_file),
        code="link.ca_bundle_missing",
    )  # fmt: skip


def test_another_home_links_this_hub_with_what_hub_show_prints(
    tmp_path: Path, key_passphrase: None
) -> None:
    """Two fleetpki homes: B links A's running hub as an azure link and trusts its CA there."""
    from fleetpki.services.context import LOCAL_ADMIN_ID
    from support.server import start_server

    with start_server(tmp_path / "a", token_endpoint_enabled=True) as server:
        shown = run(tmp_path / "a", "hub", "show")
        assert "hub link add NAME --azure" in shown.stdout and "--service-url" in shown.stdout
        a = json.loads(run(tmp_path / "a", "hub", "show", "-o", "json").stdout)
        assert (a["serviceUrl"], a["authorityHost"]) == (server.base_url, server.base_url)

        b = tmp_path / "b"
        run(b, "init")
        cas = json.loads(run(b, "ca", "list", "-o", "json").stdout)
        issuing = next(c for c in cas if c["tier"] == "issuing")
        token = tmp_path / "token"
        token.write_text(server.admin_token)
        run(
            b,
            "hub", "link", "add", "a", "--azure", "--ca", issuing["id"],
            "--subscription", a["subscriptionId"], "--resource-group", a["resourceGroup"],
            "--hub", a["hubName"], "--management-url", a["managementUrl"],
            "--service-url", a["serviceUrl"], "--ca-bundle", a["caBundle"],
            "--authority-host", a["authorityHost"], "--credential", "client-secret",
            "--tenant", a["tenantId"], "--client-id", LOCAL_ADMIN_ID, "--secret-file", str(token),
        )  # fmt: skip
        trusted = run(b, "hub", "link", "trust", "a", issuing["id"])
        assert "verified" in trusted.stderr
        held = {c.sha1_hex.upper(): c.is_verified for c in server.fleet.hub_trust.list()}
        assert held.get(issuing["sha1"].upper()) is True
