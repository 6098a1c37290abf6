"""Allocation across linked hubs: an enrollment sends devices evenly to the built-in hub
and to a hub behind an ``azure`` hub link, which the provisioning service registers the
device in through the link's connector (Azure's service REST API, a twin PATCH for the
initial twin). The linked hub is a real ``fleetpki serve`` reached as an Azure IoT Hub
is, as in ``fleetpki demo``; a link that fails answers ``failed`` and creates nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from fleetpki.hub.azure.dps import RegistrationStatus
from fleetpki.services import Actor
from fleetpki.services.context import LOCAL_ADMIN_ID
from fleetpki.services.hub_links import link_command
from fleetpki.services.provisioning_enrollments import (
    AllocationPolicy,
    EnrollmentKind,
    EnrollmentSpec,
    hub_for,
)
from fleetpki.services.provisioning_requests import DeviceCredentials, RegistrationRequest
from support.hub_control import issue_device_certificate, issuing_ca
from support.server import LiveServer, start_server

ADMIN = Actor.local_admin()
TWIN = {"tags": {"fleet": "linked"}, "properties": {"desired": {"interval": 7}}}
LINK = "far-hub"


@pytest.fixture(name="server")
def server_fixture(tmp_path: Path, key_passphrase: None) -> Iterator[LiveServer]:
    with start_server(
        tmp_path / "home", token_endpoint_enabled=True, provisioning_register_interval_seconds=0
    ) as server:
        fleet = server.fleet
        identity = fleet.hub_management.show()
        secret = fleet.principals.create_token(ADMIN, LOCAL_ADMIN_ID, name="link").secret
        ca = issuing_ca(fleet)
        fleet.hub_links.add(
            ADMIN,
            link_command(
                LINK,
                "azure",
                ca_ids=[ca.id],
                subscription_id=identity.subscription_id,
                resource_group=identity.resource_group,
                hub_name=identity.hub_name,
                management_url=server.base_url,
                service_url=server.base_url,
                ca_bundle=str(server.ca_bundle),
                credential="client-secret",
                tenant_id=identity.tenant_id,
                client_id=LOCAL_ADMIN_ID,
                authority_host=server.base_url,
                secret=secret,
            ),
        )
        assert fleet.hub_links.trust(ADMIN, LINK, ca.id).verified
        yield server


def _register(server: LiveServer, device_id: str) -> RegistrationRequest:
    fleet = server.fleet
    leaf, chain, _ = issue_device_certificate(fleet, device_id)
    der = [c.public_bytes(serialization.Encoding.DER) for c in chain]
    return RegistrationRequest(
        fleet.provisioning.id_scope,
        device_id,
        DeviceCredentials(leaf.public_bytes(serialization.Encoding.DER), tuple(der)),
        body_registration_id=device_id,
    )


def _device_for(hubs: list[str], host: str, prefix: str) -> str:
    """A registration id that the hashed allocation sends to ``host``."""
    return next(
        f"{prefix}-{n}"
        for n in range(1000)
        if hub_for(hubs, f"{prefix}-{n}", AllocationPolicy.HASHED) == host
    )


def test_hashed_allocation_across_the_builtin_and_a_linked_hub(server: LiveServer) -> None:
    fleet = server.fleet
    builtin = fleet.settings.hostname
    view = fleet.provisioning_enrollments.add(
        ADMIN,
        EnrollmentSpec(
            EnrollmentKind.GROUP,
            "spread",
            ca=issuing_ca(fleet).id,
            allocation=AllocationPolicy.HASHED,
            hubs=(builtin, LINK),
            initial_twin=TWIN,
        ),
    )
    linked = next(h for h in view.hubs if h != builtin)
    assert linked == "127.0.0.1"  # the host of the link's service URL
    hubs = list(view.hubs)

    far = _device_for(hubs, linked, "far")
    operation = fleet.provisioning.register(_register(server, far))
    assert operation.status is RegistrationStatus.ASSIGNED, operation.to_json()
    assert operation.state is not None and operation.state.assigned_hub == linked
    # Created in the linked hub through its connector (the same hub here, reached as
    # an Azure IoT Hub): certificate-authority authentication and the initial twin.
    assert fleet.hub_devices.get(far).auth_type == "certificateAuthority"
    twin = fleet.hub_twins.get(far)
    assert (twin.tags, twin.desired) == ({"fleet": "linked"}, {"interval": 7})

    near = _device_for(hubs, builtin, "near")
    operation = fleet.provisioning.register(_register(server, near))
    assert operation.state is not None and operation.state.assigned_hub == builtin


def test_a_linked_hub_that_fails_answers_failed_and_creates_nothing(
    server: LiveServer,
) -> None:
    fleet = server.fleet
    identity = fleet.hub_management.show()
    # A second link whose hub does not answer (nothing listens on 127.0.0.9:9).
    fleet.hub_links.add(
        ADMIN,
        link_command(
            "dead-hub",
            "azure",
            subscription_id=identity.subscription_id,
            resource_group=identity.resource_group,
            hub_name="dead",
            management_url="https://127.0.0.9:9",
            service_url="https://127.0.0.9:9",
            ca_bundle=str(server.ca_bundle),
            credential="connection-string",
            secret="HostName=127.0.0.9;SharedAccessKeyName=iothubowner;SharedAccessKey="
            + "a2V5" * 11,
        ),
    )
    fleet.provisioning_enrollments.add(
        ADMIN,
        EnrollmentSpec(
            EnrollmentKind.GROUP, "dead-only", ca=issuing_ca(fleet).id, hubs=("dead-hub",)
        ),
    )
    operation = fleet.provisioning.register(_register(server, "far-broken"))
    assert operation.status is RegistrationStatus.FAILED, operation.to_json()
    assert operation.state is not None
    assert "link.unreachable" in (operation.state.error_message or ""), operation.to_json()
    assert [d.device_id for d in fleet.hub_devices.list()] == []
