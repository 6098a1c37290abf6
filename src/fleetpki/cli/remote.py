"""The CLI against a remote server (``--server URL``): the same commands over the client."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from fleetpki.client import Client
from fleetpki.errors import ValidationError
from fleetpki.keystore import PrivateKey

__all__ = [
    "ca_list",
    "cert_list",
    "cert_renew",
    "cert_request",
    "cert_revoke",
    "cert_show",
    "domain_list",
    "domain_register",
    "make_client",
]

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def make_client(server: str, token: str | None, ca_bundle: Path | None) -> Client:
    """A client for ``server``.

    Raises:
        ValidationError: ``cli.token_required`` without a token.
    """
    if not token:
        raise ValidationError(
            "cli.token_required", "--server needs a token: use --token or set FLEETPKI_TOKEN"
        )
    return Client(server, token, verify=ca_bundle if ca_bundle else True)


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _time(value: str | None) -> str:
    if not value:
        return ""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%SZ")


def _write_out(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    out.write_text(text)
    err_console.print(f"wrote {out}")


def ca_list(client: Client) -> None:
    """``ca list``."""
    table = _table("id", "name", "tier", "key", "status", "not after")
    for ca in client.list_cas():
        table.add_row(
            ca["id"], ca["name"], ca["tier"], ca["key_spec"], ca["status"], _time(ca["not_after"])
        )
    console.print(table)


def domain_register(
    client: Client,
    name: str,
    owners: list[str],
    requesters: list[str],
    ca: str | None,
    template: str | None,
) -> None:
    """``domain register``."""
    d = client.register_domain(
        name, owners=owners, requesters=requesters, ca_id=ca, template_id=template
    )
    console.print(f"registered domain {d['name']} ({d['id']})")


def domain_list(client: Client) -> None:
    """``domain list``."""
    table = _table("name", "id", "CA", "owners", "requesters")
    for d in client.list_domains():
        table.add_row(
            d["name"], d["id"], d["ca_id"], "\n".join(d["owners"]), "\n".join(d["requesters"])
        )
    console.print(table)


def cert_request(
    client: Client, domain: str, csr: bytes, days: int | None, out: Path | None, ca: str | None
) -> None:
    """``cert request``."""
    answer = client.issue_certificate(csr, domain=domain, ca_id=ca, validity_days=days)
    cert = answer["certificate"]
    err_console.print(
        f"issued serial {cert['serial']} for {cert['subject_cn']}, valid until "
        f"{_time(cert['not_after'])}"
    )
    _write_out(answer["chain_pem"], out)


def cert_list(
    client: Client,
    domain: str | None,
    status: str | None,
    expiring: dt.timedelta | None,
    limit: int,
) -> None:
    """``cert list``."""
    days = None if expiring is None else max(0, int(expiring / dt.timedelta(days=1)))
    rows = client.list_certificates(
        domain=domain, status=status, expiring_within_days=days, limit=limit
    )
    table = _table("serial", "subject", "status", "not after", "sha1")
    for r in rows:
        table.add_row(
            r["serial"], r["subject_cn"] or "", r["status"], _time(r["not_after"]), r["sha1"]
        )
    console.print(table)
    err_console.print(f"{len(rows)} certificate(s)")


def cert_show(client: Client, serial: str, pem: bool) -> None:
    """``cert show``."""
    r = client.get_certificate(serial)
    if pem:
        sys.stdout.write(r["certificate_pem"])
        return
    rows = [
        ("serial", r["serial"]),
        ("subject", f"CN={r['subject_cn']}" if r["subject_cn"] else "-"),
        ("SANs", ", ".join(r["sans"]) or "-"),
        ("key", r["key_spec"]),
        ("status", r["status"]),
        ("not before", _time(r["not_before"])),
        ("not after", _time(r["not_after"])),
        ("sha1", r["sha1"]),
        ("sha256", r["sha256"]),
        ("issuer CA", r["ca_id"]),
        ("requested by", r["requested_by"]),
    ]
    if r.get("renews_serial"):
        rows.append(("renews", r["renews_serial"]))
    if r["status"] == "revoked":
        rows.append(("revoked", f"{_time(r['revoked_at'])} ({r['revocation_reason']})"))
    for key, value in rows:
        console.print(f"{key:>12}  {value}")


def cert_revoke(client: Client, serial: str, reason: str) -> None:
    """``cert revoke``."""
    r = client.revoke_certificate(serial, reason)
    console.print(f"revoked {r['serial']} ({r['subject_cn']}) for {r['revocation_reason']}")


def cert_renew(
    client: Client,
    cert_pem: bytes,
    key: PrivateKey,
    csr: bytes,
    days: int | None,
    out: Path | None,
    audience: str | None,
) -> None:
    """``cert renew``: the token is signed locally; the key never leaves the machine."""
    answer = client.renew_certificate(cert_pem, key, csr, validity_days=days, audience=audience)
    cert = answer["certificate"]
    err_console.print(
        f"renewed: serial {cert['serial']} for {cert['subject_cn']}, valid until "
        f"{_time(cert['not_after'])}"
    )
    _write_out(answer["chain_pem"], out)
