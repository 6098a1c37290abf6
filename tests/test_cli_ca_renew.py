"""``fleetpki ca renew``, ``ca show`` with generations and ``ca activate``, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from support.openssl import verify
from test_cli import run


def _issuing(home: Path) -> dict[str, object]:
    cas = json.loads(run(home, "ca", "list", "-o", "json").stdout)
    return next(c for c in cas if c["tier"] == "issuing")  # type: ignore[no-any-return]


def test_renew_shows_generations_and_the_new_certificate_verifies(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "init")
    issuing = _issuing(home)
    done = run(home, "ca", "renew", str(issuing["id"]), "--rekey", "--days", "30")
    assert "generation 2 (a new key" in done.stderr and ": active" in done.stderr

    shown = json.loads(run(home, "ca", "show", str(issuing["id"]), "-o", "json").stdout)
    assert shown["generation"] == 2 and shown["crl_url"].endswith("/2.crl")
    assert [(g["number"], g["state"], g["rekeyed"]) for g in shown["generations"]] == [
        (1, "retiring", False),
        (2, "active", True),
    ]
    text = run(home, "ca", "show", str(issuing["id"])).stdout
    assert "retiring" in text and "(new key)" in text

    chain = tmp_path / "chain.pem"
    run(home, "ca", "export", str(issuing["id"]), "--out", str(chain))
    certificates = chain.read_text().split("-----END CERTIFICATE-----\n")
    leaf, root = tmp_path / "issuing.pem", tmp_path / "root.pem"
    leaf.write_text(certificates[0] + "-----END CERTIFICATE-----\n")
    root.write_text(certificates[1] + "-----END CERTIFICATE-----\n")
    assert leaf.read_text() == shown["generations"][1]["certificate_pem"]
    assert verify(leaf, root).ok


def test_ca_list_expiring_shows_what_needs_renewing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "init")
    issuing = str(_issuing(home)["id"])
    assert json.loads(run(home, "ca", "list", "--expiring", "30d", "-o", "json").stdout) == []
    run(home, "ca", "renew", issuing, "--same-key", "--days", "10")
    soon = json.loads(run(home, "ca", "list", "--expiring", "30d", "-o", "json").stdout)
    assert [c["id"] for c in soon] == [issuing]
    bad = run(home, "ca", "list", "--expiring", "soon", ok=False)
    assert bad.returncode == 2 and "number of days" in bad.stderr


def test_bad_renewals_are_named_and_change_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "init")
    issuing = str(_issuing(home)["id"])
    for args, code in [
        (("ca", "renew", "00000000-0000-4000-8000-00000000dead"), "ca.not_found"),
        (("ca", "renew", issuing, "--days", "9000"), "ca.days_beyond_parent"),
        (("ca", "activate", issuing), "ca.nothing_pending"),
    ]:
        done = run(home, *args, ok=False)
        assert done.returncode == 1 and f"({code})" in done.stderr, done.stderr
    too_long = run(home, "ca", "renew", issuing, "--days", "99999", ok=False)
    assert too_long.returncode == 2 and "--days" in too_long.stderr
    shown = json.loads(run(home, "ca", "show", issuing, "-o", "json").stdout)
    assert [g["number"] for g in shown["generations"]] == [1]


def test_a_root_rollover_from_the_cli_shows_the_link_certificates(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "init")
    cas = json.loads(run(home, "ca", "list", "-o", "json").stdout)
    root = next(c for c in cas if c["tier"] == "root")
    issuing = _issuing(home)
    done = run(home, "ca", "renew", str(root["id"]), "--rekey")
    assert "generation 2 (a new key" in done.stderr and ": active" in done.stderr
    shown = json.loads(run(home, "ca", "show", str(root["id"]), "-o", "json").stdout)
    [_, rolled] = shown["generations"]
    assert len(rolled["cross_certificates_pem"]) == 2
    child = json.loads(run(home, "ca", "show", str(issuing["id"]), "-o", "json").stdout)
    assert [(g["state"], g["parent_generation"]) for g in child["generations"]] == [
        ("retiring", 1),
        ("active", 2),
    ]
    # The exported chain is the re-certified issuing CA, the new root and the link.
    chain = tmp_path / "chain.pem"
    run(home, "ca", "export", str(issuing["id"]), "--out", str(chain))
    assert chain.read_text().count("BEGIN CERTIFICATE") == 3
