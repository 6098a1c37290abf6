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
