"""``fleetpki hub link``: the hubs this CA drives and one-click trust, local or ``--server``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from fleetpki.application import FleetPKI
from fleetpki.cli.context import CliContext, UsageProblem, cli_context
from fleetpki.cli.output import (
    Output,
    OutputOption,
    err_console,
    fmt_iso,
    print_fields,
    print_json,
    print_table,
    table,
)
from fleetpki.errors import ValidationError
from fleetpki.services import Actor
from fleetpki.services.hub_links import link_command

__all__ = ["app"]

app = typer.Typer(
    help="Hub links: the hubs this CA drives (the built-in hub, Azure IoT Hubs).",
    no_args_is_help=True,
)

LinkName = Annotated[str, typer.Argument(help="The link's name.")]

# The JSON is the API's (``HubLinkOut``, camelCase); locally it is built by the same
# presenter, so a script reads one shape either way.


def _local_add(fleet: FleetPKI, fields: dict[str, Any]) -> dict[str, Any]:
    from fleetpki.api.hub_links import hub_link_out

    command = link_command(
        fields["name"],
        fields["kind"],
        ca_ids=fields["caIds"],
        disable_on_revoke=fields["disableOnRevoke"],
        register_devices=fields["registerDevices"],
        subscription_id=fields.get("subscriptionId"),
        resource_group=fields.get("resourceGroup"),
        hub_name=fields.get("hubName"),
        management_url=fields.get("managementUrl"),
        credential=fields.get("credential"),
        tenant_id=fields.get("tenantId"),
        client_id=fields.get("clientId"),
        authority_host=fields.get("authorityHost"),
        certificate_path=fields.get("certificatePath"),
        service_url=fields.get("serviceUrl"),
        ca_bundle=fields.get("caBundle"),
        secret=fields.get("secret"),
    )
    return hub_link_out(fleet.hub_links.add(Actor.local_admin(), command)).model_dump(mode="json")


def _list(state: CliContext) -> list[dict[str, Any]]:
    if client := state.client():
        return client.list_hub_links()
    from fleetpki.api.hub_links import hub_link_out

    views = state.fleet("hub link list").hub_links.list(Actor.local_admin())
    return [hub_link_out(v).model_dump(mode="json") for v in views]


def _show(state: CliContext, name: str) -> dict[str, Any]:
    if client := state.client():
        return client.get_hub_link(name)
    from fleetpki.api.hub_links import hub_link_out

    view = state.fleet("hub link show").hub_links.get(Actor.local_admin(), name)
    return hub_link_out(view).model_dump(mode="json")


def _trust(state: CliContext, name: str, ca_id: str) -> dict[str, Any]:
    if client := state.client():
        return client.trust_in_hub_link(name, ca_id)
    from fleetpki.api.hub_links import link_trust_out

    view = state.fleet("hub link trust").hub_links.trust(Actor.local_admin(), name, ca_id)
    return link_trust_out(view).model_dump(mode="json")


def _read_secret(path: Path) -> str:
    """The secret in ``path`` (``-`` for stdin), without its trailing newline."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise ValidationError(
            "cli.unreadable_file", f"cannot read the secret file {path}: {exc.strerror}"
        ) from None
    secret = text.strip()
    if not secret:
        raise ValidationError("cli.empty_secret", f"the secret file {path} is empty")
    return secret


def _target(link: dict[str, Any]) -> str:
    azure = link["azure"]
    if azure is None:
        return "this process's built-in hub"
    return f"{azure['hubName']} ({azure['resourceGroup']}, {azure['subscriptionId']})"


@app.command("add")
def link_add(
    ctx: typer.Context,
    name: LinkName,
    builtin: Annotated[
        bool, typer.Option("--builtin", help="Link this process's built-in hub.")
    ] = False,
    azure: Annotated[
        bool,
        typer.Option(
            "--azure", help="Link an Azure IoT Hub (or a fleetpki hub elsewhere) by its ARM path."
        ),
    ] = False,
    subscription: Annotated[str | None, typer.Option(help="The subscription id (a GUID).")] = None,
    resource_group: Annotated[str | None, typer.Option(help="The hub's resource group.")] = None,
    hub: Annotated[str | None, typer.Option(help="The IoT hub's name.")] = None,
    management_url: Annotated[
        str | None,
        typer.Option(help="Azure Resource Manager's URL (default https://management.azure.com)."),
    ] = None,
    credential: Annotated[
        str | None,
        typer.Option(help="default, client-secret, client-certificate or connection-string."),
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="The Entra tenant id.")] = None,
    client_id: Annotated[str | None, typer.Option(help="The application (client) id.")] = None,
    authority_host: Annotated[
        str | None, typer.Option(help="The token authority (default Azure's public cloud).")
    ] = None,
    certificate: Annotated[
        Path | None,
        typer.Option(help="The client certificate's PEM (certificate and key), kept in place."),
    ] = None,
    service_url: Annotated[
        str | None,
        typer.Option(
            help="The hub's service API, when not https://HOSTNAME (another fleetpki's "
            "hub: its API URL)."
        ),
    ] = None,
    ca_bundle: Annotated[
        Path | None,
        typer.Option(help="A CA bundle (PEM) to check the hub's and the authority's TLS with."),
    ] = None,
    secret_file: Annotated[
        Path | None,
        typer.Option(
            help="A file holding the client secret, connection string or certificate "
            "password ('-' for stdin); stored encrypted, never printed."
        ),
    ] = None,
    ca: Annotated[
        list[str] | None, typer.Option("--ca", help="A CA id the link trusts (repeatable).")
    ] = None,
    disable_on_revoke: Annotated[
        bool,
        typer.Option(
            "--disable-on-revoke/--no-disable-on-revoke",
            help="Disable a device in the hub when its certificate is revoked.",
        ),
    ] = True,
    register_devices: Annotated[
        bool,
        typer.Option(
            "--register-devices/--no-register-devices",
            help="Register a device in the hub when its domain is registered.",
        ),
    ] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Add a hub link: --builtin, or --azure with --subscription, --resource-group and --hub."""
    if builtin == azure:
        raise UsageProblem("cli.link_kind", "give exactly one of --builtin and --azure")
    fields: dict[str, Any] = {
        "name": name,
        "kind": "builtin" if builtin else "azure",
        "caIds": list(ca or []),
        "disableOnRevoke": disable_on_revoke,
        "registerDevices": register_devices,
    }
    optional = {
        "subscriptionId": subscription,
        "resourceGroup": resource_group,
        "hubName": hub,
        "managementUrl": management_url,
        "credential": credential,
        "tenantId": tenant,
        "clientId": client_id,
        "authorityHost": authority_host,
        "certificatePath": str(certificate.resolve()) if certificate else None,
        "serviceUrl": service_url,
        "caBundle": str(ca_bundle.resolve()) if ca_bundle else None,
        "secret": _read_secret(secret_file) if secret_file else None,
    }
    fields |= {key: value for key, value in optional.items() if value is not None}
    state = cli_context(ctx)
    if client := state.client():
        link = client.add_hub_link(fields)
    else:
        link = _local_add(state.fleet("hub link add"), fields)
    if output is Output.JSON:
        print_json(link)
        return
    err_console.print(f"hub link {link['name']} added: {_target(link)}")


@app.command("list")
def link_list(ctx: typer.Context, output: OutputOption = Output.TABLE) -> None:
    """List hub links (``-o json``: the API's ``HubLinkOut``)."""
    links = _list(cli_context(ctx))
    if output is Output.JSON:
        print_json(links)
        return
    rows = table("name", "kind", "hub", "CAs", "disable on revoke", "register", wrap=("hub",))
    for link in links:
        verified = sum(1 for c in link["cas"] if c["verifiedAt"])
        rows.add_row(
            link["name"],
            link["kind"],
            _target(link),
            f"{len(link['cas'])} ({verified} verified)",
            "yes" if link["disableOnRevoke"] else "no",
            "yes" if link["registerDevices"] else "no",
        )
    print_table(rows)


@app.command("show")
def link_show(ctx: typer.Context, name: LinkName, output: OutputOption = Output.TABLE) -> None:
    """Show a hub link and the CAs it trusts (never its secret)."""
    link = _show(cli_context(ctx), name)
    if output is Output.JSON:
        print_json(link)
        return
    fields: list[tuple[str, object]] = [
        ("name", link["name"]),
        ("kind", link["kind"]),
        ("consumer", link["consumer"]),
        ("disable on revoke", "yes" if link["disableOnRevoke"] else "no"),
        ("register devices", "yes" if link["registerDevices"] else "no"),
    ]
    azure = link["azure"]
    if azure is not None:
        fields += [
            ("subscription", azure["subscriptionId"]),
            ("resource group", azure["resourceGroup"]),
            ("hub", azure["hubName"]),
            ("management URL", azure["managementUrl"]),
            ("credential", azure["credential"]),
            ("tenant", azure["tenantId"] or "-"),
            ("client id", azure["clientId"] or "-"),
            ("authority host", azure["authorityHost"] or "-"),
            ("certificate", azure["certificatePath"] or "-"),
            ("service URL", azure["serviceUrl"] or "-"),
            ("CA bundle", azure["caBundle"] or "-"),
            ("secret", "stored, encrypted" if link["hasSecret"] else "-"),
        ]
    fields.append(("created", fmt_iso(link["createdAt"])))
    for entry in link["cas"]:
        state = (
            f"verified {fmt_iso(entry['verifiedAt'])} as {entry['certificateName']} "
            f"({entry['thumbprint']})"
            if entry["verifiedAt"]
            else "not trusted yet"
        )
        if entry["lastError"]:
            state += f"; last error: {entry['lastError']}"
        fields.append((f"CA {entry['caId']}", f"{entry['caName']}: {state}"))
    print_fields(fields)


@app.command("remove")
def link_remove(ctx: typer.Context, name: LinkName) -> None:
    """Remove a hub link (the hub keeps the CA certificates and devices it was given)."""
    state = cli_context(ctx)
    if client := state.client():
        client.remove_hub_link(name)
    else:
        state.fleet("hub link remove").hub_links.remove(Actor.local_admin(), name)
    err_console.print(f"hub link {name} removed")


@app.command("trust")
def link_trust(
    ctx: typer.Context,
    name: LinkName,
    ca_id: Annotated[str, typer.Argument(help="The id of a fleetpki CA.")],
    output: OutputOption = Output.TABLE,
) -> None:
    """One-click trust: upload the CA to the link's hub and prove possession of its key."""
    result = _trust(cli_context(ctx), name, ca_id)
    if output is Output.JSON:
        print_json(result)
        return
    err_console.print(
        f"hub link {result['link']} trusts {result['certificateName']} "
        f"({result['thumbprint']}), {'verified' if result['verified'] else 'NOT verified'}"
    )


def _status(state: CliContext, name: str | None, limit: int) -> list[dict[str, Any]]:
    if client := state.client():
        names = [name] if name is not None else [link["name"] for link in client.list_hub_links()]
        return [client.hub_link_status(n, limit=limit) for n in names]
    from fleetpki.api.hub_links import link_status_out

    views = state.fleet("hub link status").hub_links.status(Actor.local_admin(), name, limit=limit)
    return [link_status_out(v).model_dump(mode="json") for v in views]


def _retry(state: CliContext, name: str | None) -> list[dict[str, Any]]:
    if client := state.client():
        names = [name] if name is not None else [link["name"] for link in client.list_hub_links()]
        return [client.retry_hub_link(n) for n in names]
    from fleetpki.api.hub_links import link_retry_out

    views = state.fleet("hub link retry").hub_links.retry(Actor.local_admin(), name)
    return [link_retry_out(v).model_dump(mode="json") for v in views]


OptionalLinkName = Annotated[
    str | None, typer.Argument(help="The link's name (default: every link).")
]


@app.command("status")
def link_status(
    ctx: typer.Context,
    name: OptionalLinkName = None,
    limit: Annotated[
        int, typer.Option(min=1, max=1000, help="Failed deliveries to list per link.")
    ] = 20,
    output: OutputOption = Output.TABLE,
) -> None:
    """Delivery to the linked hubs: pending, failing (retried with backoff) and failed."""
    statuses = _status(cli_context(ctx), name, limit)
    if output is Output.JSON:
        print_json(statuses)
        return
    rows = table(
        "link", "pending", "failing", "failed", "oldest pending", "last error", wrap=("last error",)
    )
    for entry in statuses:
        rows.add_row(
            entry["link"],
            str(entry["pending"]),
            str(entry["failing"]),
            str(entry["failed"]),
            fmt_iso(entry["oldestPendingAt"]) if entry["oldestPendingAt"] else "-",
            entry["lastError"] or "-",
        )
    print_table(rows)
    failed = [(entry["link"], f) for entry in statuses for f in entry["failedDeliveries"]]
    if failed:
        rows = table("link", "event", "subject", "attempts", "committed", "error", wrap=("error",))
        for link, f in failed:
            rows.add_row(
                link,
                f"{f['eventType']} #{f['eventId']}",
                f["subject"],
                str(f["attempts"]),
                fmt_iso(f["createdAt"]),
                f["lastError"] or "-",
            )
        err_console.print("failed deliveries (requeue with `fleetpki hub link retry`):")
        print_table(rows)


@app.command("retry")
def link_retry(
    ctx: typer.Context, name: OptionalLinkName = None, output: OutputOption = Output.TABLE
) -> None:
    """Requeue the failed deliveries of a link (or of every link), due now."""
    results = _retry(cli_context(ctx), name)
    if output is Output.JSON:
        print_json(results)
        return
    for entry in results:
        err_console.print(f"hub link {entry['link']}: {entry['requeued']} delivery(ies) requeued")
