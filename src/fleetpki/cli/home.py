"""``fleetpki init`` and ``fleetpki demo``: make a home, or run the lifecycle in a throwaway one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetpki.application import InitResult, init_home
from fleetpki.cli.context import cli_context
from fleetpki.cli.output import console, err_console
from fleetpki.keystore import PassphraseOrigin, PassphraseSource
from fleetpki.keystore.passphrase import PASSPHRASE_ENV
from fleetpki.pki.keys import KeySpec
from fleetpki.services.authority import HierarchySpec
from fleetpki.settings import DEFAULT_PKCS11_MODULE, PKCS11_PIN_ENV, Settings

__all__ = ["HomeOption", "demo", "init"]

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="The fleetpki home (default $FLEETPKI_HOME, else ~/.fleetpki)."),
]


def _create(settings: Settings, spec: HierarchySpec) -> InitResult:
    with err_console.status("creating the CA hierarchy..."):
        result = init_home(settings, spec)
    result.app.close()
    return result


def init(
    ctx: typer.Context,
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
    keystore: Annotated[
        str,
        typer.Option(
            help="Where CA keys are kept: `file` (encrypted files in the home) or `pkcs11` "
            "(generated in a token, never leaving it; docs/keystore.md)."
        ),
    ] = "file",
    pkcs11_module: Annotated[
        str, typer.Option(help="The PKCS#11 module (with --keystore pkcs11).")
    ] = DEFAULT_PKCS11_MODULE,
    pkcs11_token: Annotated[
        str, typer.Option(help="The label of the PKCS#11 token that keeps the CA keys.")
    ] = "",
    pkcs11_pin_file: Annotated[
        str,
        typer.Option(
            help=f"A file holding the token's user PIN; ${PKCS11_PIN_ENV} wins. The PIN "
            "itself is never written to the configuration."
        ),
    ] = "",
    key_passphrase_file: Annotated[
        str,
        typer.Option(
            help="Where to keep the key passphrase: read if the file exists, else a new "
            "random one is written to it. Default: a new file under ~/.config/fleetpki/ "
            f"(outside the home); ${PASSPHRASE_ENV} or a systemd credential win."
        ),
    ] = "",
) -> None:
    """Create a home: configuration, database and a root + issuing CA hierarchy."""
    state = cli_context(ctx)
    state.require_local("init")
    resolved = state.home_path(home)
    settings = Settings.default_for(resolved, database_url)
    if key_passphrase_file:
        path = Path(key_passphrase_file).expanduser().absolute()
        settings = settings.with_changes(key_passphrase_file=str(path))
    if public_url:
        settings = settings.with_changes(public_url=public_url.rstrip("/"))
    if keystore != "file":
        settings = settings.with_changes(
            keystore=keystore,
            pkcs11_module=pkcs11_module,
            pkcs11_token=pkcs11_token,
            pkcs11_pin_file=str(Path(pkcs11_pin_file).expanduser().resolve())
            if pkcs11_pin_file
            else "",
        )
    spec = HierarchySpec(
        name=name,
        root_key=KeySpec.parse(root_key),
        issuing_key=KeySpec.parse(issuing_key),
        max_validity_days=max_validity_days,
    )
    result = _create(settings, spec)
    console.print(f"[green]initialised[/green] {resolved}")
    console.print(f"  database      {result.app.db.safe_url}")
    if settings.keystore == "pkcs11":
        console.print(f"  CA keys       PKCS#11 token {settings.pkcs11_token!r}")
    console.print(f"  passphrase    {_where(result.passphrase.source)}", highlight=False)
    for warning in result.passphrase.warnings(resolved):
        err_console.print(f"[yellow]warning[/yellow]: {warning}", highlight=False)
    console.print(f"  root CA       {result.root.name}  {result.root.id}  ({result.root.key_spec})")
    console.print(
        f"  issuing CA    {result.issuing.name}  {result.issuing.id}  ({result.issuing.key_spec})"
    )
    console.print(
        f"  template      {result.template.name}  {result.template.id}  "
        f"(max {result.template.max_validity_days} days)"
    )


def _where(source: PassphraseSource) -> str:
    """Where ``init`` found or put the key passphrase, and what the operator must do."""
    if source.origin is PassphraseOrigin.ENVIRONMENT:
        return f"from ${PASSPHRASE_ENV}, not stored: set it for every command and for serve"
    if source.origin is PassphraseOrigin.CREDENTIAL:
        return f"from {source.describe()}, not stored"
    return f"{source.path} (back it up apart from the home: the keys need it)"


def demo() -> None:
    """Run the certificate lifecycle end to end in a temporary home (no setup needed)."""
    from fleetpki.demo import run_demo

    raise typer.Exit(run_demo(console))
