"""``fleetpki cert``: request, list, show, revoke and renew certificates, locally or remotely."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from fleetpki.application import FleetPKI
from fleetpki.cli.context import cli_context
from fleetpki.cli.inputs import load_private_key, parse_duration, read_file
from fleetpki.cli.output import (
    Output,
    OutputOption,
    console,
    err_console,
    fmt_iso,
    print_fields,
    print_json,
    print_table,
    table,
    write_out,
)
from fleetpki.keystore import PrivateKey
from fleetpki.pki.certtoken import make_certificate_token
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.ca_views import IssuedView
from fleetpki.services.certificate_access import load_certificate_pem
from fleetpki.services.certificates import CertificateQuery, IssueCommand

__all__ = ["app"]

app = typer.Typer(help="Certificates: request, list, show, renew, revoke.", no_args_is_help=True)

Serial = Annotated[str, typer.Argument(help="Serial number in hex.")]

# Every command below gets the API's JSON shapes, from the server or, locally, from
# the presenters the API uses (``fleetpki.api.presenters``); an issued certificate is
# ``{"certificate": {...}, "chain_pem": "..."}`` as ``POST /v1/certificates`` answers.


def _issued_json(issued: IssuedView) -> dict[str, Any]:
    from fleetpki.api.presenters import certificate_out, pem_of

    # The leaf and the issuing CA; the root is the trust anchor and is not sent.
    return {
        "certificate": certificate_out(issued.certificate).model_dump(mode="json"),
        "chain_pem": issued.pem + pem_of(issued.chain[0]),
        "root_pem": pem_of(issued.chain[-1]),
    }


def _local_request(
    fleet: FleetPKI, domain: str, csr: bytes, days: int | None, ca: str | None
) -> dict[str, Any]:
    actor = Actor.local_admin()
    target = fleet.domains.for_request(actor, domain, ca)
    issued = fleet.certificates.issue(
        actor,
        IssueCommand(
            ca_id=target.ca_id, template_id=target.template_id, csr=csr, validity_days=days
        ),
    )
    named = {issued.issued.common_name, *(s.value for s in issued.issued.subject_alt_names)}
    if domain not in named:
        err_console.print(f"[yellow]note[/yellow]: the certificate does not name {domain!r}")
    return _issued_json(issued)


def _local_list(fleet: FleetPKI, query: CertificateQuery) -> list[dict[str, Any]]:
    from fleetpki.api.presenters import certificate_out

    rows = fleet.certificates.search(Actor.local_admin(), query)
    return [certificate_out(r).model_dump(mode="json") for r in rows]


def _local_show(fleet: FleetPKI, serial: str) -> dict[str, Any]:
    from fleetpki.api.presenters import certificate_out

    return certificate_out(fleet.certificates.get(Actor.local_admin(), serial)).model_dump(
        mode="json"
    )


def _local_revoke(fleet: FleetPKI, serial: str, reason: RevocationReason) -> dict[str, Any]:
    from fleetpki.api.presenters import certificate_out

    revoked = fleet.certificates.revoke(Actor.local_admin(), serial, reason)
    return certificate_out(revoked).model_dump(mode="json")


def _local_renew(
    fleet: FleetPKI, cert_pem: bytes, key: PrivateKey, csr: bytes, days: int | None
) -> dict[str, Any]:
    current = load_certificate_pem(cert_pem)
    audience = fleet.settings.certificate_token_audience
    token = make_certificate_token(current, key, audience=audience, now=fleet.now())
    issued = fleet.renewal.renew_with_token(
        token=token, certificate_pem=cert_pem, csr=csr, validity_days=days
    )
    return _issued_json(issued)


@app.command("request")
def cert_request(
    ctx: typer.Context,
    domain: Annotated[str, typer.Option("--domain", help="The registered domain (device id).")],
    csr: Annotated[Path, typer.Option("--csr", help="PEM or DER CSR file.")],
    days: Annotated[int | None, typer.Option("--days", help="Validity in days.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the PEM chain here.")] = None,
    ca: Annotated[str | None, typer.Option(help="Issuing CA id (default: the domain's).")] = None,
) -> None:
    """Issue a certificate for a CSR whose CN (or SAN) is a registered domain."""
    csr_bytes = read_file(csr, "CSR")
    state = cli_context(ctx)
    if client := state.client():
        answer = client.issue_certificate(csr_bytes, domain=domain, ca_id=ca, validity_days=days)
    else:
        answer = _local_request(state.fleet("cert request"), domain, csr_bytes, days, ca)
    cert = answer["certificate"]
    err_console.print(
        f"issued serial {cert['serial']} for {cert['subject_cn']}, valid until "
        f"{fmt_iso(cert['not_after'])}",
        highlight=False,
    )
    write_out(answer["chain_pem"], out)


@app.command("list")
def cert_list(
    ctx: typer.Context,
    domain: Annotated[str | None, typer.Option(help="Only this domain.")] = None,
    status: Annotated[str | None, typer.Option(help="valid, revoked or expired.")] = None,
    expiring: Annotated[
        str | None, typer.Option(help="Valid ones expiring within, e.g. 7d.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    output: OutputOption = Output.TABLE,
) -> None:
    """List certificates, newest first."""
    within = parse_duration(expiring) if expiring else None
    state = cli_context(ctx)
    if client := state.client():
        # The API takes whole days.
        days = None if within is None else max(0, int(within / dt.timedelta(days=1)))
        rows = client.list_certificates(
            domain=domain, status=status, expiring_within_days=days, limit=limit
        )
    else:
        query = CertificateQuery(domain=domain, status=status, expiring_within=within, limit=limit)
        rows = _local_list(state.fleet("cert list"), query)
    if output is Output.JSON:
        print_json(rows)
        return
    shown = table("serial", "subject", "status", "not after", "sha1", wrap=["subject"])
    for r in rows:
        shown.add_row(
            r["serial"], r["subject_cn"] or "", r["status"], fmt_iso(r["not_after"]), r["sha1"]
        )
    print_table(shown)
    err_console.print(f"{len(rows)} certificate(s)")


@app.command("show")
def cert_show(
    ctx: typer.Context,
    serial: Serial,
    pem: Annotated[
        bool, typer.Option("--pem", help="Print the PEM instead of the details.")
    ] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Show one certificate."""
    state = cli_context(ctx)
    client = state.client()
    r = client.get_certificate(serial) if client else _local_show(state.fleet("cert show"), serial)
    if pem:
        sys.stdout.write(r["certificate_pem"])
        return
    if output is Output.JSON:
        print_json(r)
        return
    rows: list[tuple[str, object]] = [
        ("serial", r["serial"]),
        ("subject", f"CN={r['subject_cn']}" if r["subject_cn"] else "-"),
        ("SANs", ", ".join(r["sans"]) or "-"),
        ("key", r["key_spec"]),
        ("status", r["status"]),
        ("not before", fmt_iso(r["not_before"])),
        ("not after", fmt_iso(r["not_after"])),
        ("sha1", r["sha1"]),
        ("sha256", r["sha256"]),
        ("issuer CA", r["ca_id"]),
        ("requested by", r["requested_by"]),
    ]
    if r.get("renews_serial"):
        rows.append(("renews", r["renews_serial"]))
    if r.get("superseded_by_serial"):
        rows.append(("superseded by", r["superseded_by_serial"]))
    if r["status"] == "revoked":
        rows.append(("revoked", f"{fmt_iso(r['revoked_at'])} ({r['revocation_reason']})"))
    print_fields(rows)


@app.command("revoke")
def cert_revoke(
    ctx: typer.Context,
    serial: Serial,
    reason: Annotated[
        str, typer.Option(help="RFC 5280 reason, e.g. keyCompromise.")
    ] = "unspecified",
) -> None:
    """Revoke a certificate with an RFC 5280 reason code."""
    parsed = RevocationReason.parse(reason)
    state = cli_context(ctx)
    if client := state.client():
        r = client.revoke_certificate(serial, parsed.rfc_name)
    else:
        r = _local_revoke(state.fleet("cert revoke"), serial, parsed)
    console.print(
        f"revoked {r['serial']} ({r['subject_cn']}) for {r['revocation_reason']}", highlight=False
    )


@app.command("renew")
def cert_renew(
    ctx: typer.Context,
    cert: Annotated[Path, typer.Option("--cert", help="The current certificate (PEM).")],
    key: Annotated[Path, typer.Option("--key", help="The current certificate's private key.")],
    csr: Annotated[Path, typer.Option("--csr", help="CSR for the new certificate.")],
    days: Annotated[int | None, typer.Option("--days", help="Validity in days.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the PEM chain here.")] = None,
    audience: Annotated[
        str | None,
        typer.Option(help="With --server: the server's token audience (default its URL)."),
    ] = None,
) -> None:
    """Renew with the current certificate: its key signs a one-time certificate token."""
    cert_pem = read_file(cert, "certificate")
    load_certificate_pem(cert_pem)  # a bad file fails before the key is read
    private_key = load_private_key(key)
    csr_bytes = read_file(csr, "CSR")
    state = cli_context(ctx)
    if client := state.client():
        answer = client.renew_certificate(
            cert_pem, private_key, csr_bytes, validity_days=days, audience=audience
        )
    else:
        answer = _local_renew(state.fleet("cert renew"), cert_pem, private_key, csr_bytes, days)
    new = answer["certificate"]
    err_console.print(
        f"renewed: serial {new['serial']} for {new['subject_cn']}, valid until "
        f"{fmt_iso(new['not_after'])}",
        highlight=False,
    )
    write_out(answer["chain_pem"], out)
