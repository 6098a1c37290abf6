"""The ``fleetpki`` command: init a home, manage CAs, principals, domains and certificates."""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization
from rich import box
from rich.console import Console
from rich.table import Table

from fleetpki import __version__
from fleetpki.cli import device, remote
from fleetpki.cli import hub as hub_cli
from fleetpki.client import Client
from fleetpki.errors import FleetPKIError, NotFoundError, ValidationError
from fleetpki.keystore import PrivateKey
from fleetpki.pki.certtoken import make_certificate_token
from fleetpki.pki.keys import KeySpec
from fleetpki.pki.profile import Template
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import (
    Actor,
    FleetPKI,
    authority,
    certificates,
    domains,
    init_home,
    principals,
)
from fleetpki.services.authority import HierarchySpec
from fleetpki.services.certificates import CertificateQuery, IssueCommand
from fleetpki.settings import Settings, resolve_home

__all__ = ["app", "main", "parse_duration"]

app = typer.Typer(
    name="fleetpki",
    help="A self-hosted certificate authority for IoT device fleets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
ca_app = typer.Typer(help="Certificate authorities.", no_args_is_help=True)
template_app = typer.Typer(help="Issuance templates.", no_args_is_help=True)
principal_app = typer.Typer(help="Principals (users and services).", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
domain_app = typer.Typer(
    help="Domains: device ids with owners and requesters.", no_args_is_help=True
)
cert_app = typer.Typer(
    help="Certificates: request, list, show, renew, revoke.", no_args_is_help=True
)
app.add_typer(ca_app, name="ca")
app.add_typer(template_app, name="template")
app.add_typer(principal_app, name="principal")
app.add_typer(token_app, name="token")
app.add_typer(domain_app, name="domain")
app.add_typer(cert_app, name="cert")
app.add_typer(hub_cli.hub_app, name="hub")
app.add_typer(device.app, name="device")

# Ids and serials must survive copy and paste: never truncate, and do not wrap
# messages (an error is one line).
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="The fleetpki home (default $FLEETPKI_HOME, else ~/.fleetpki)."),
]


class _State:
    home: Path | None = None
    server: str | None = None
    token: str | None = None
    ca_bundle: Path | None = None


_state = _State()


def _print_version(value: bool) -> None:
    if value:
        console.print(f"fleetpki {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    home: HomeOption = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
    server: Annotated[
        str | None,
        typer.Option(
            "--server", envvar="FLEETPKI_SERVER", help="Act on a remote fleetpki server (URL)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="FLEETPKI_TOKEN", help="API token for --server.", show_default=False
        ),
    ] = None,
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            "--ca-bundle", envvar="FLEETPKI_CA_BUNDLE", help="CA bundle to trust for --server."
        ),
    ] = None,
) -> None:
    """A self-hosted certificate authority for IoT device fleets."""
    _state.home = home
    _state.server, _state.token, _state.ca_bundle = server, token, ca_bundle


def _client() -> Client | None:
    """The client for ``--server``, or ``None`` to act on the local home."""
    if not _state.server:
        return None
    return remote.make_client(_state.server, _state.token, _state.ca_bundle)


def _home(home: Path | None = None) -> Path:
    return resolve_home(home or _state.home)


@contextmanager
def _opened(home: Path | None = None) -> Iterator[FleetPKI]:
    instance = FleetPKI.open(Settings.load(_home(home)))
    try:
        yield instance
    finally:
        instance.close()


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValidationError(
            "cli.unreadable_file", f"cannot read {what} {path}: {exc.strerror}"
        ) from None


def _write_out(text: str, out: Path | None, *, mode: int = 0o644) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    err_console.print(f"wrote {out}")


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """Parse ``7d``, ``12h``, ``30m``, ``2w`` or a plain number of days.

    Raises:
        ValidationError: ``cli.bad_duration``.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValidationError("cli.bad_duration", f"bad duration {text!r}: use e.g. 7d, 12h, 2w")
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _fmt_time(value: dt.datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


# --------------------------------------------------------------------------- init


@app.command()
def init(
    home: HomeOption = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db (default SQLite)."
        ),
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option(help="Base URL put into certificates for CRL, OCSP and CA issuers."),
    ] = None,
    name: Annotated[
        str, typer.Option(help="Name of the hierarchy, used in CA names.")
    ] = "fleetpki",
    root_key: Annotated[str, typer.Option(help="Root CA key type.")] = KeySpec.EC_P384.value,
    issuing_key: Annotated[str, typer.Option(help="Issuing CA key type.")] = KeySpec.EC_P256.value,
    max_validity_days: Annotated[
        int, typer.Option(help="Maximum validity of the IoT device template, in days.")
    ] = 365,
) -> None:
    """Create a home: configuration, database and a root + issuing CA hierarchy."""
    resolved = _home(home)
    settings = Settings.default_for(resolved, database_url)
    if public_url:
        settings = settings.with_changes(public_url=public_url.rstrip("/"))
    spec = HierarchySpec(
        name=name,
        root_key=KeySpec.parse(root_key),
        issuing_key=KeySpec.parse(issuing_key),
        max_validity_days=max_validity_days,
    )
    with err_console.status("creating the CA hierarchy..."):
        result = init_home(settings, spec)
    result.app.close()
    console.print(f"[green]initialised[/green] {resolved}")
    console.print(f"  database      {result.app.db.safe_url}")
    console.print(f"  root CA       {result.root.name}  {result.root.id}  ({result.root.key_spec})")
    console.print(
        f"  issuing CA    {result.issuing.name}  {result.issuing.id}  ({result.issuing.key_spec})"
    )
    console.print(
        f"  template      {result.template.name}  {result.template.id}  "
        f"(max {result.template.max_validity_days} days)"
    )


# --------------------------------------------------------------------------- ca / template


@ca_app.command("list")
def ca_list() -> None:
    """List the CAs."""
    if client := _client():
        with client:
            remote.ca_list(client)
        return
    with _opened() as inst, inst.transaction() as session:
        table = _table("id", "name", "tier", "key", "status", "not after")
        for ca in authority.list_cas(session):
            table.add_row(ca.id, ca.name, ca.tier, ca.key_spec, ca.status, _fmt_time(ca.not_after))
    console.print(table)


@ca_app.command("show")
def ca_show(ca_id: Annotated[str, typer.Argument(help="The CA id.")]) -> None:
    """Show one CA."""
    with _opened() as inst, inst.transaction() as session:
        ca = authority.get_ca(session, ca_id)
        rows = [
            ("id", ca.id),
            ("name", ca.name),
            ("tier", ca.tier),
            ("parent", ca.parent_id or "-"),
            ("status", ca.status),
            ("key", ca.key_spec),
            ("subject", ca.subject),
            ("serial", ca.serial_hex),
            ("sha1", ca.sha1_hex),
            ("not before", _fmt_time(ca.not_before)),
            ("not after", _fmt_time(ca.not_after)),
            ("crl", inst.urls.crl_url(ca.id)),
        ]
    for key, value in rows:
        console.print(f"{key:>11}  {value}")


@ca_app.command("export")
def ca_export(
    ca_id: Annotated[str, typer.Argument(help="The CA id.")],
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Export a CA's certificate chain as PEM (the CA first, then its parents)."""
    with _opened() as inst, inst.transaction() as session:
        chain = authority.ca_chain(session, authority.get_ca(session, ca_id))
    text = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
    _write_out(text, out)


@template_app.command("list")
def template_list() -> None:
    """List the issuance templates."""
    with _opened() as inst, inst.transaction() as session:
        table = _table("id", "name", "CA", "max days", "key types", "EKUs")
        for t in authority.list_templates(session):
            table.add_row(
                t.id,
                t.name,
                t.ca_id,
                str(t.max_validity_days),
                ", ".join(t.allowed_key_specs),
                ", ".join(Template.eku_name(e) for e in t.default_ekus),
            )
    console.print(table)


# --------------------------------------------------------------------------- principals, tokens


@principal_app.command("add")
def principal_add(
    principal_id: Annotated[str, typer.Argument(help="An Entra-style object id (GUID).")],
    name: Annotated[str, typer.Option("--name", help="Friendly name.")],
    principal_type: Annotated[
        str, typer.Option("--type", help="User or ServicePrincipal.")
    ] = "User",
    admin: Annotated[bool, typer.Option("--admin", help="Make the principal an admin.")] = False,
) -> None:
    """Register a principal that can own domains and request certificates."""
    with _opened() as inst, inst.transaction() as session:
        p = principals.add_principal(
            session,
            Actor.local_admin(),
            principal_id,
            name,
            principal_type=principal_type,
            is_admin=admin,
            now=inst.now(),
        )
    console.print(f"added principal {p.id} ({p.friendly_name})")


@principal_app.command("list")
def principal_list() -> None:
    """List principals."""
    with _opened() as inst, inst.transaction() as session:
        table = _table("id", "name", "type", "admin")
        for p in principals.list_principals(session):
            table.add_row(p.id, p.friendly_name, p.principal_type, "yes" if p.is_admin else "")
    console.print(table)


@token_app.command("create")
def token_create(
    principal: Annotated[str, typer.Option("--principal", help="The principal id.")],
    name: Annotated[str, typer.Option(help="A label for the token.")] = "api",
    expires: Annotated[
        str | None, typer.Option(help="Lifetime such as 90d; default never.")
    ] = None,
) -> None:
    """Create an API token.  The token is shown once; only its hash is stored."""
    lifetime = parse_duration(expires) if expires else None
    with _opened() as inst, inst.transaction() as session:
        new = principals.create_token(
            session, Actor.local_admin(), principal, name=name, lifetime=lifetime, now=inst.now()
        )
    err_console.print(f"token {new.token_id} for {new.principal_id}; it will not be shown again:")
    sys.stdout.write(new.secret + "\n")


# --------------------------------------------------------------------------- domains


def _default_issuing_ca(inst: FleetPKI, ca: str | None) -> str:
    if ca:
        return ca
    with inst.transaction() as session:
        issuing = [
            c for c in authority.list_cas(session) if c.tier == "issuing" and c.status == "active"
        ]
    if len(issuing) != 1:
        raise ValidationError("cli.ca_required", "several issuing CAs exist: choose one with --ca")
    return issuing[0].id


@domain_app.command("register")
def domain_register(
    name: Annotated[str, typer.Argument(help="The device id or DNS name.")],
    owner: Annotated[list[str], typer.Option("--owner", help="Owner principal id (repeatable).")],
    requester: Annotated[
        list[str] | None, typer.Option("--requester", help="Requester principal id (repeatable).")
    ] = None,
    ca: Annotated[str | None, typer.Option(help="Issuing CA id (default: the only one).")] = None,
    template: Annotated[
        str | None, typer.Option(help="Template id (default: the CA's first).")
    ] = None,
) -> None:
    """Register a domain with its owners and requesters."""
    if client := _client():
        with client:
            remote.domain_register(client, name, owner, requester or [], ca, template)
        return
    with _opened() as inst:
        ca_id = _default_issuing_ca(inst, ca)
        with inst.transaction() as session:
            d = domains.register_domain(
                session,
                Actor.local_admin(),
                ca_id=ca_id,
                template_id=template,
                name=name,
                owners=owner,
                requesters=requester or [],
                now=inst.now(),
            )
    console.print(f"registered domain {d.name} ({d.id})")


@domain_app.command("list")
def domain_list() -> None:
    """List domains with their owners and requesters."""
    if client := _client():
        with client:
            remote.domain_list(client)
        return
    with _opened() as inst, inst.transaction() as session:
        table = _table("name", "id", "CA", "owners", "requesters")
        for d in domains.list_domains(session, Actor.local_admin()):
            table.add_row(
                d.name,
                d.id,
                d.ca_id,
                "\n".join(d.principals_with(domains.OWNER)),
                "\n".join(d.principals_with(domains.REQUESTER)),
            )
    console.print(table)


# --------------------------------------------------------------------------- certificates


def _chain_pem(inst: FleetPKI, leaf_pem: str, ca_id: str) -> str:
    with inst.transaction() as session:
        chain = authority.ca_chain(session, authority.get_ca(session, ca_id))
    # The leaf and the issuing CA; the root is the trust anchor and is not sent.
    return leaf_pem + chain[0].public_bytes(serialization.Encoding.PEM).decode()


@cert_app.command("request")
def cert_request(
    domain: Annotated[str, typer.Option("--domain", help="The registered domain (device id).")],
    csr: Annotated[Path, typer.Option("--csr", help="PEM or DER CSR file.")],
    days: Annotated[int | None, typer.Option("--days", help="Validity in days.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the PEM chain here.")] = None,
    ca: Annotated[str | None, typer.Option(help="Issuing CA id (default: the domain's).")] = None,
) -> None:
    """Issue a certificate for a CSR whose CN (or SAN) is a registered domain."""
    csr_bytes = _read_file(csr, "CSR")
    if client := _client():
        with client:
            remote.cert_request(client, domain, csr_bytes, days, out, ca)
        return
    with _opened() as inst:
        with inst.transaction() as session:
            found = domains.list_domains(session, Actor.local_admin(), name=domain)
            found = [d for d in found if ca is None or d.ca_id == ca]
            if not found:
                raise NotFoundError("domain.not_found", f"no registered domain {domain!r}")
            if len(found) > 1:
                raise ValidationError(
                    "cli.ca_required", f"{domain!r} exists under several CAs: use --ca"
                )
            record, issued = certificates.issue(
                session,
                Actor.local_admin(),
                inst.keystore,
                inst.urls,
                IssueCommand(
                    ca_id=found[0].ca_id,
                    template_id=found[0].template_id,
                    csr=csr_bytes,
                    validity_days=days,
                ),
                now=inst.now(),
            )
        if domain not in {issued.common_name, *(s.value for s in issued.subject_alt_names)}:
            err_console.print(f"[yellow]note[/yellow]: the certificate does not name {domain!r}")
        text = _chain_pem(inst, issued.pem, record.ca_id)
    err_console.print(
        f"issued serial {record.serial_hex} for {record.subject_cn}, valid until "
        f"{_fmt_time(record.not_after)}"
    )
    _write_out(text, out)


@cert_app.command("list")
def cert_list(
    domain: Annotated[str | None, typer.Option(help="Only this domain.")] = None,
    status: Annotated[str | None, typer.Option(help="valid, revoked or expired.")] = None,
    expiring: Annotated[
        str | None, typer.Option(help="Valid ones expiring within, e.g. 7d.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
) -> None:
    """List certificates, newest first."""
    if client := _client():
        with client:
            remote.cert_list(
                client, domain, status, parse_duration(expiring) if expiring else None, limit
            )
        return
    query = CertificateQuery(
        domain=domain,
        status=status,
        expiring_within=parse_duration(expiring) if expiring else None,
        limit=limit,
    )
    with _opened() as inst, inst.transaction() as session:
        rows = certificates.list_certificates(session, Actor.local_admin(), query, now=inst.now())
        table = _table("serial", "subject", "status", "not after", "sha1")
        for r in rows:
            table.add_row(
                r.serial_hex, r.subject_cn or "", r.status, _fmt_time(r.not_after), r.sha1_hex
            )
    console.print(table)
    err_console.print(f"{len(rows)} certificate(s)")


@cert_app.command("show")
def cert_show(
    serial: Annotated[str, typer.Argument(help="Serial number in hex.")],
    pem: Annotated[
        bool, typer.Option("--pem", help="Print the PEM instead of the details.")
    ] = False,
) -> None:
    """Show one certificate."""
    if client := _client():
        with client:
            remote.cert_show(client, serial, pem)
        return
    with _opened() as inst, inst.transaction() as session:
        r = certificates.get_certificate(session, serial)
        if pem:
            sys.stdout.write(certificates.certificate_pem(r))
            return
        rows = [
            ("serial", r.serial_hex),
            ("subject", f"CN={r.subject_cn}" if r.subject_cn else "-"),
            ("SANs", ", ".join(r.sans) or "-"),
            ("key", r.key_spec),
            ("status", r.status),
            ("not before", _fmt_time(r.not_before)),
            ("not after", _fmt_time(r.not_after)),
            ("sha1", r.sha1_hex),
            ("sha256", r.sha256_hex),
            ("issuer CA", r.ca_id),
            ("requested by", r.requested_by),
        ]
        if r.renews_id is not None:
            rows.append(("renews", str(r.renews_id)))
        if r.status == "revoked":
            reason = RevocationReason.parse(r.revocation_reason or 0)
            rows.append(("revoked", f"{_fmt_time(r.revoked_at)} ({reason.rfc_name})"))
    for key, value in rows:
        console.print(f"{key:>12}  {value}")


@cert_app.command("revoke")
def cert_revoke(
    serial: Annotated[str, typer.Argument(help="Serial number in hex.")],
    reason: Annotated[
        str, typer.Option(help="RFC 5280 reason, e.g. keyCompromise.")
    ] = "unspecified",
) -> None:
    """Revoke a certificate with an RFC 5280 reason code."""
    parsed = RevocationReason.parse(reason)
    if client := _client():
        with client:
            remote.cert_revoke(client, serial, parsed.rfc_name)
        return
    with _opened() as inst, inst.transaction() as session:
        r = certificates.get_certificate(session, serial)
        certificates.revoke(session, Actor.local_admin(), r, parsed, now=inst.now())
    console.print(f"revoked {r.serial_hex} ({r.subject_cn}) for {parsed.rfc_name}")


def _load_private_key(path: Path) -> PrivateKey:
    data = _read_file(path, "key")
    passphrase = os.environ.get("FLEETPKI_DEVICE_KEY_PASSPHRASE")
    try:
        key = serialization.load_pem_private_key(
            data, password=passphrase.encode() if passphrase else None
        )
    except (ValueError, TypeError) as exc:
        raise ValidationError(
            "cli.bad_key",
            f"cannot load the private key {path} (encrypted? set FLEETPKI_DEVICE_KEY_PASSPHRASE)",
        ) from exc
    if not isinstance(key, PrivateKey):
        raise ValidationError("cli.bad_key", f"unsupported key type in {path}")
    return key


@cert_app.command("renew")
def cert_renew(
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
    cert_pem = _read_file(cert, "certificate")
    current = certificates.load_certificate_pem(cert_pem)
    private_key = _load_private_key(key)
    csr_bytes = _read_file(csr, "CSR")
    if client := _client():
        with client:
            remote.cert_renew(client, cert_pem, private_key, csr_bytes, days, out, audience)
        return
    with _opened() as inst:
        token = make_certificate_token(
            current, private_key, audience=inst.settings.certificate_token_audience, now=inst.now()
        )
        with inst.transaction() as session:
            record, issued = certificates.renew_with_token(
                session,
                inst.keystore,
                inst.urls,
                token=token,
                certificate_pem=cert_pem,
                csr=csr_bytes,
                validity_days=days,
                audience=inst.settings.certificate_token_audience,
                now=inst.now(),
            )
        text = _chain_pem(inst, issued.pem, record.ca_id)
    err_console.print(
        f"renewed: serial {record.serial_hex} for {record.subject_cn}, valid until "
        f"{_fmt_time(record.not_after)}"
    )
    _write_out(text, out)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    api_port: Annotated[int | None, typer.Option(help="HTTPS API port (default 8443).")] = None,
    hostname: Annotated[
        str | None, typer.Option(help="DNS name for the server certificate.")
    ] = None,
    only: Annotated[str | None, typer.Option(help="Run only `ca` (the API) or `hub`.")] = None,
    mqtt_port: Annotated[
        int | None, typer.Option(help="The hub's MQTT/TLS port (default 8883).")
    ] = None,
) -> None:
    """Serve the HTTPS API (EZCA-compatible routes and /v1) and the MQTT hub."""
    from fleetpki.api.server import serve as run_serve

    if only not in (None, "ca", "hub"):
        raise ValidationError("cli.bad_only", "--only must be `ca` or `hub`")
    with _opened() as inst:
        settings = inst.settings
        chosen_host = host or settings.host
        port = settings.api_port if api_port is None else api_port
        # The hub reads its address from the settings (fleetpki.hub.server.start_hub).
        inst.settings = settings = settings.with_changes(
            host=chosen_host,
            hostname=hostname or settings.hostname,
            mqtt_port=settings.mqtt_port if mqtt_port is None else mqtt_port,
        )
        if only != "hub":
            err_console.print(
                f"fleetpki API on https://{chosen_host}:{port}  (CA bundle: "
                f"{settings.home / 'tls' / 'ca-bundle.pem'}; Ctrl-C stops)"
            )
        if only != "ca":
            err_console.print(f"fleetpki hub on mqtts://{chosen_host}:{settings.mqtt_port}")
        run_serve(
            inst,
            host=chosen_host,
            api_port=port,
            hostname=hostname or settings.hostname,
            only="ca" if only == "ca" else "hub" if only == "hub" else None,
        )


@app.command()
def demo() -> None:
    """Run the certificate lifecycle end to end in a temporary home (no setup needed)."""
    from fleetpki.demo import run_demo

    raise typer.Exit(run_demo(console))


# --------------------------------------------------------------------------- entry point


def main() -> None:
    """Run the CLI; a fleetpki error prints one line and exits with status 1.

    Usage errors (a missing argument, an unknown option) are Click's: a usage line
    and status 2.
    """
    try:
        app()
    except FleetPKIError as exc:
        err_console.print(
            f"[red]error:[/red] {exc.message} [dim]({exc.code})[/dim]", highlight=False
        )
        raise SystemExit(1) from None
