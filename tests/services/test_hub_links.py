"""Hub links as a resource, and one-click trust through the built-in hub's connector."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from fleetpki.application import FleetPKI
from fleetpki.connectors import DeviceAuthentication, HubConnector, TrustedCA
from fleetpki.errors import FleetPKIError
from fleetpki.services.context import Actor
from fleetpki.services.hub_devices import DeviceSpec
from fleetpki.services.hub_link_settings import (
    DEFAULT_MANAGEMENT_URL,
    AzureTarget,
    CredentialKind,
    LinkKind,
    LinkSecret,
)
from fleetpki.services.hub_links import HubLinkService, LinkCommand, LinkConnection
from fleetpki.store.hub_models import HubLink
from support.api import row_counts
from support.database import raw_session
from support.hub import issue_device, start_hub_thread
from support.hub_control import issuing_ca
from support.mqtt_device import connect_once
from support.openssl import verify
from support.pkilint import assert_lints_clean

ADMIN = Actor.local_admin()
SUBSCRIPTION = "5b6c8a8e-3f0e-4c5e-9a53-2c1f7b1f0d9e"
SECRET = "s3cr3t-client-value"


def _azure(**changes: object) -> AzureTarget:
    target = AzureTarget(SUBSCRIPTION, "rg-fleet", "my-hub")
    return dataclasses.replace(target, **changes)  # type: ignore[arg-type]


def test_add_list_show_and_remove_a_builtin_link(fleet: FleetPKI) -> None:
    ca_id = issuing_ca(fleet).id
    added = fleet.hub_links.add(
        ADMIN, LinkCommand("local", LinkKind.BUILTIN, ca_ids=[ca_id, ca_id])
    )

    assert (added.name, added.kind, added.consumer) == ("local", LinkKind.BUILTIN, "link:local")
    assert (added.disable_on_revoke, added.register_devices) == (True, False)
    assert (added.azure, added.has_secret) == (None, False)
    assert [(c.ca_id, c.certificate_name, c.verified_at) for c in added.cas] == [
        (ca_id, None, None)
    ]
    assert fleet.hub_links.list(ADMIN) == [added]
    assert fleet.hub_links.get(ADMIN, "local") == added

    fleet.hub_links.remove(ADMIN, "local")
    assert fleet.hub_links.list(ADMIN) == []
    with pytest.raises(FleetPKIError) as info:
        fleet.hub_links.get(ADMIN, "local")
    assert info.value.code == "link.not_found"
    actions = [e.action for e in fleet.audit.latest(ADMIN, object_type="hub_link")]
    assert actions == ["hub.link.remove", "hub.link.add"]


def test_an_azure_link_keeps_its_target_and_seals_its_secret(fleet: FleetPKI) -> None:
    target = _azure(
        credential=CredentialKind.CLIENT_SECRET,
        tenant_id="72f988bf-86f1-41af-91ab-2d7cd011db47",
        client_id="0b8d2f6e-1c3a-4f5e-8d7c-6b5a4f3e2d1c",
        authority_host="login.microsoftonline.us",
        management_url="https://management.usgovcloudapi.net/",
        subscription_id=SUBSCRIPTION.upper(),
    )
    command = LinkCommand(
        "gov",
        LinkKind.AZURE,
        azure=target,
        secret=LinkSecret(SECRET),
        disable_on_revoke=False,
        register_devices=True,
    )
    view = fleet.hub_links.add(ADMIN, command)

    assert view.azure == dataclasses.replace(
        target,
        subscription_id=SUBSCRIPTION,
        authority_host="https://login.microsoftonline.us",
        management_url="https://management.usgovcloudapi.net",
    )
    assert (view.has_secret, view.disable_on_revoke, view.register_devices) == (True, False, True)
    assert SECRET not in repr(view)
    assert SECRET not in repr(command)
    with raw_session(fleet) as session:
        stored = session.scalars(select(HubLink)).one().secret
    assert stored is not None
    assert SECRET not in stored
    entries = fleet.audit.latest(ADMIN, object_type="hub_link")
    assert SECRET not in repr(entries)


def test_the_management_url_defaults_to_azures_public_cloud(fleet: FleetPKI) -> None:
    view = fleet.hub_links.add(ADMIN, LinkCommand("cloud", LinkKind.AZURE, azure=_azure()))
    assert view.azure is not None
    assert (view.azure.management_url, view.azure.credential) == (
        DEFAULT_MANAGEMENT_URL,
        CredentialKind.DEFAULT,
    )


_BAD = {
    "unknown CA": (
        LinkCommand("x", LinkKind.BUILTIN, ca_ids=["00000000-0000-4000-8000-00000000dead"]),
        "ca.not_found",
    ),
    "name taken": (LinkCommand("taken", LinkKind.BUILTIN), "link.exists"),
    "bad name": (LinkCommand("no spaces", LinkKind.BUILTIN), "link.bad_name"),
    "malformed subscription": (
        LinkCommand("x", LinkKind.AZURE, azure=_azure(subscription_id="not-a-guid")),
        "link.bad_subscription",
    ),
    "an empty hub name": (
        LinkCommand("x", LinkKind.AZURE, azure=_azure(hub_name=" ")),
        "link.target_incomplete",
    ),
    "bad resource group": (
        LinkCommand("x", LinkKind.AZURE, azure=_azure(resource_group="ends.")),
        "link.bad_resource_group",
    ),
    "bad hub name": (
        LinkCommand("x", LinkKind.AZURE, azure=_azure(hub_name="a_b")),
        "link.bad_hub_name",
    ),
    "plain http": (
        LinkCommand("x", LinkKind.AZURE, azure=_azure(management_url="http://example.net")),
        "link.bad_url",
    ),
    "client secret without one": (
        LinkCommand(
            "x",
            LinkKind.AZURE,
            azure=_azure(credential=CredentialKind.CLIENT_SECRET, tenant_id="t", client_id="c"),
        ),
        "link.credential_incomplete",
    ),
    "a bad connection string": (
        LinkCommand(
            "x",
            LinkKind.AZURE,
            azure=_azure(credential=CredentialKind.CONNECTION_STRING),
            secret=LinkSecret("HostName=h;SharedAccessKeyName=p"),
        ),
        "link.bad_connection_string",
    ),
    "a missing client certificate": (
        LinkCommand(
            "x",
            LinkKind.AZURE,
            azure=_azure(
                credential=CredentialKind.CLIENT_CERTIFICATE,
                tenant_id="t",
                client_id="c",
                certificate_path="/nonexistent/client.pem",
            ),
        ),
        "link.certificate_missing",
    ),
    "a builtin link with a credential": (
        LinkCommand("x", LinkKind.BUILTIN, secret=LinkSecret(SECRET)),
        "link.option_not_used",
    ),
    "an azure link without a target": (
        LinkCommand("x", LinkKind.AZURE),
        "link.target_incomplete",
    ),
}


@pytest.mark.parametrize("case", list(_BAD))
def test_bad_input_is_refused_and_changes_nothing(fleet: FleetPKI, case: str) -> None:
    fleet.hub_links.add(ADMIN, LinkCommand("taken", LinkKind.BUILTIN))
    before = row_counts(fleet)
    command, code = _BAD[case]
    with pytest.raises(FleetPKIError) as info:
        fleet.hub_links.add(ADMIN, command)
    assert info.value.code == code
    assert SECRET not in str(info.value)
    assert row_counts(fleet) == before
    assert [link.name for link in fleet.hub_links.list(ADMIN)] == ["taken"]


def test_only_admins_manage_links(fleet: FleetPKI) -> None:
    stranger = Actor("22222222-2222-4222-8222-222222222222", is_admin=False, source="test")
    before = row_counts(fleet)
    for call in (
        lambda: fleet.hub_links.add(stranger, LinkCommand("x", LinkKind.BUILTIN)),
        lambda: fleet.hub_links.list(stranger),
        lambda: fleet.hub_links.trust(stranger, "x", issuing_ca(fleet).id),
    ):
        with pytest.raises(FleetPKIError) as info:
            call()
        assert info.value.code == "auth.admin_required"
    assert row_counts(fleet) == before


def test_an_azure_link_gets_the_azure_connector_and_a_builtin_one_this_hub(
    fleet: FleetPKI,
) -> None:
    from fleetpki.connectors.azure import AzureHubConnector

    connection = LinkConnection("cloud", LinkKind.AZURE, azure=_azure())
    assert isinstance(fleet.hub_links.connector_for(connection), AzureHubConnector)
    builtin = fleet.hub_links.connector_for(LinkConnection("local", LinkKind.BUILTIN))
    assert builtin.health().reachable


@pytest.mark.parametrize("case", ["unknown link", "unknown CA"])
def test_trust_with_bad_names_changes_nothing(fleet: FleetPKI, case: str) -> None:
    fleet.hub_links.add(ADMIN, LinkCommand("local", LinkKind.BUILTIN))
    before = row_counts(fleet)
    link, ca_id = "local", issuing_ca(fleet).id
    if case == "unknown link":
        link = "nope"
    else:
        ca_id = "00000000-0000-4000-8000-00000000dead"
    with pytest.raises(FleetPKIError) as info:
        fleet.hub_links.trust(ADMIN, link, ca_id)
    assert info.value.code == {"unknown link": "link.not_found", "unknown CA": "ca.not_found"}[case]
    assert row_counts(fleet) == before


class RecordingConnector:
    """The built-in hub's own connector, keeping each proof of possession it was handed."""

    def __init__(self, inner: HubConnector) -> None:
        self.inner = inner
        self.proofs: list[bytes] = []
        self.closed = False

    def trust_ca(self, name: str, certificate_pem: bytes, prove: object) -> TrustedCA:
        def recording(code: str) -> bytes:
            proof = prove(code)  # type: ignore[operator]
            self.proofs.append(proof)
            return proof  # type: ignore[no-any-return]

        return self.inner.trust_ca(name, certificate_pem, recording)

    def remove_ca(self, name: str) -> bool:
        return self.inner.remove_ca(name)

    def register_device(
        self, device_id: str, *, initial_twin: Mapping[str, Any] | None = None
    ) -> bool:
        return self.inner.register_device(device_id, initial_twin=initial_twin)

    def set_device_enabled(
        self, device_id: str, enabled: bool, *, reason: str | None = None
    ) -> bool:
        return self.inner.set_device_enabled(device_id, enabled, reason=reason)

    def set_device_authentication(
        self, device_id: str, authentication: DeviceAuthentication
    ) -> bool:
        return self.inner.set_device_authentication(device_id, authentication)

    def health(self) -> object:
        return self.inner.health()

    def close(self) -> None:
        self.closed = True


def _recording_links(fleet: FleetPKI) -> tuple[HubLinkService, RecordingConnector]:
    recorder = RecordingConnector(
        fleet.hub_links.connector_for(LinkConnection("local", LinkKind.BUILTIN))
    )
    links = HubLinkService(
        fleet.store,
        fleet.keystore,
        fleet.now,
        secret=lambda: b"unused",
        connectors=lambda _link: recorder,  # type: ignore[arg-type, return-value]
    )
    return links, recorder


def test_one_click_trust_lets_a_device_of_that_ca_connect(
    sqlite_fleet: FleetPKI, tmp_path: Path
) -> None:
    fleet = sqlite_fleet
    ca = issuing_ca(fleet)
    fleet.hub_links.add(ADMIN, LinkCommand("local", LinkKind.BUILTIN))
    fleet.hub_devices.put(DeviceSpec("dev-link"))
    files = issue_device(fleet, "dev-link", tmp_path / "dev")
    with start_hub_thread(fleet, trust=False) as hub:
        assert connect_once(hub.port, hub.ca_file, files) == 5  # no CA trusted yet

        links, recorder = _recording_links(fleet)
        trusted = links.trust(ADMIN, "local", ca.id)

        assert trusted.verified
        assert trusted.thumbprint == ca.sha1_hex.upper()
        assert connect_once(hub.port, hub.ca_file, files) == 0
    hub_ca = fleet.hub_trust.get(trusted.certificate_name)
    assert (hub_ca.is_verified, hub_ca.fleetpki_ca_id) == (True, ca.id)
    [entry] = fleet.hub_links.get(ADMIN, "local").cas
    assert (entry.ca_id, entry.certificate_name, entry.thumbprint) == (
        ca.id,
        trusted.certificate_name,
        trusted.thumbprint,
    )
    assert entry.verified_at is not None
    assert entry.last_error is None

    # The proof the CA's key signed: CN = the code, issued by the CA, clean to pkilint
    # and to openssl as a certificate of the CA's chain.
    [proof_der] = recorder.proofs
    assert recorder.closed  # the connector is released after trust
    proof = x509.load_der_x509_certificate(proof_der)
    proof.verify_directly_issued_by(x509.load_der_x509_certificate(ca.certificate_der))
    assert_lints_clean("certificate", proof_der, include_warnings=True)
    chain = fleet.cas.chain(ca.id)
    paths = []
    for index, certificate in enumerate([proof, *chain]):
        path = tmp_path / f"{index}.pem"
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        paths.append(path)
    result = verify(*paths)
    assert result.ok, result.output


def test_trusting_again_is_harmless(fleet: FleetPKI) -> None:
    ca_id = issuing_ca(fleet).id
    fleet.hub_links.add(ADMIN, LinkCommand("local", LinkKind.BUILTIN, ca_ids=[ca_id]))
    first = fleet.hub_links.trust(ADMIN, "local", ca_id)
    held = fleet.hub_trust.list()

    again = fleet.hub_links.trust(ADMIN, "local", ca_id)

    assert again == first
    assert fleet.hub_trust.list() == held  # same row, same etag: kept as it was
    assert len(fleet.hub_links.get(ADMIN, "local").cas) == 1


def test_a_ca_the_hub_already_trusts_under_another_name_is_not_uploaded_twice(
    fleet: FleetPKI,
) -> None:
    ca_id = issuing_ca(fleet).id
    direct = fleet.hub_trust.trust_local_ca(ca_id)
    fleet.hub_links.add(ADMIN, LinkCommand("local", LinkKind.BUILTIN))

    trusted = fleet.hub_links.trust(ADMIN, "local", ca_id)

    assert (trusted.certificate_name, trusted.verified) == (direct.name, True)
    assert [c.name for c in fleet.hub_trust.list()] == [direct.name]
    assert [c.ca_id for c in fleet.hub_links.get(ADMIN, "local").cas] == [ca_id]
