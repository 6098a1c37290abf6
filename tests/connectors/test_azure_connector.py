"""The ``azure`` connector against a real ``fleetpki serve``, with the real Azure SDKs.

azure-mgmt-iothub and azure-identity, unmodified, talk over TLS to fleetpki's
Azure-compatible management plane and its client-credentials token endpoint; the
registry side talks to the hub's service REST API with a bearer token from the same
credential or with a connection string's SAS. Nothing is mocked: every refusal is the
server's, translated by the connector.
"""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from fleetpki.connectors.azure import AzureHubConnector
from fleetpki.connectors.azure_config import (
    AzureCredentialConfig,
    CredentialKind,
)
from fleetpki.connectors.connector import ConnectorError, DeviceAuthentication, HubConnector
from fleetpki.services.context import LOCAL_ADMIN_ID, Actor
from fleetpki.services.hub_link_settings import LinkKind
from fleetpki.services.hub_links import LinkConnection
from support.azure_hub import Hub, hub_fixture, quiet_identity_fixture  # noqa: F401

pytestmark = pytest.mark.slow

STRANGER = "3b0c5c1e-8d0f-4b7e-a2a4-6f1c2d3e4f50"


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}"


def _stranger(hub: Hub) -> str:
    fleet = hub.server.fleet
    fleet.principals.add(Actor.local_admin(), STRANGER, "app", principal_type="ServicePrincipal")
    return fleet.principals.create_token(Actor.local_admin(), STRANGER).secret


# --------------------------------------------------------------------------- certificates


def test_one_click_trust_uploads_proves_and_verifies(hub: Hub) -> None:
    connector = hub.connector()
    issuing = hub.cas["issuing"]

    trusted = connector.trust_ca("fleet-issuing", hub.pem("issuing"), hub.prover("issuing"))

    assert trusted.name == "fleet-issuing"
    assert trusted.verified is True
    assert trusted.thumbprint == issuing.sha1_hex.upper()
    (held,) = hub.server.fleet.hub_trust.list()
    assert (held.name, held.is_verified, held.sha1_hex.upper()) == (
        "fleet-issuing",
        True,
        issuing.sha1_hex.upper(),
    )
    # The hub issued one code and the proof answered exactly it.
    assert len(hub.proofs) == 1 and len(hub.proofs[0]) == 40


def test_repeating_trust_keeps_the_verified_certificate(hub: Hub) -> None:
    connector = hub.connector()
    connector.trust_ca("fleet-issuing", hub.pem("issuing"), hub.prover("issuing"))
    before = hub.server.fleet.hub_trust.get("fleet-issuing")

    again = connector.trust_ca("fleet-issuing", hub.pem("issuing"), hub.prover("issuing"))

    assert again.verified is True
    after = hub.server.fleet.hub_trust.get("fleet-issuing")
    assert after.etag == before.etag  # nothing was written
    assert len(hub.proofs) == 1  # and no second proof was asked for


def _next_generation(hub: Hub, tier: str = "issuing") -> bytes:
    """The CA re-certified by its parent: the same subject and key, a new certificate."""
    ca = hub.cas[tier].certificate
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(ca.subject)
        .issuer_name(ca.issuer)
        .public_key(ca.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    )
    signed = hub.server.fleet.keystore.signer(hub.key_refs["root"]).sign_certificate(builder)
    return signed.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("kind", ["azure", "builtin"])
def test_a_new_generation_of_the_ca_replaces_the_old_under_its_name(hub: Hub, kind: str) -> None:
    connector = hub.connector() if kind == "azure" else _builtin(hub)
    connector.trust_ca("fleet-ca", hub.pem("issuing"), hub.prover("issuing"))

    renewed_pem = _next_generation(hub)
    replaced = connector.trust_ca("fleet-ca", renewed_pem, hub.prover("issuing"))

    renewed = x509.load_pem_x509_certificate(renewed_pem)
    sha1 = renewed.fingerprint(hashes.SHA1()).hex().upper()
    assert replaced.thumbprint == sha1
    (held,) = hub.server.fleet.hub_trust.list()
    assert (held.name, held.sha1_hex.upper(), held.is_verified) == ("fleet-ca", sha1, True)


@pytest.mark.parametrize("kind", ["azure", "builtin"])
def test_another_cas_certificate_under_the_name_is_refused_and_kept(hub: Hub, kind: str) -> None:
    connector = hub.connector() if kind == "azure" else _builtin(hub)
    connector.trust_ca("fleet-ca", hub.pem("root"), hub.prover("root"))
    before = hub.server.fleet.hub_trust.get("fleet-ca")

    with pytest.raises(ConnectorError) as info:
        connector.trust_ca("fleet-ca", hub.pem("issuing"), hub.prover("issuing"))

    assert (info.value.code, info.value.transient) == ("link.certificate_name_taken", False)
    assert "fleet-ca" in info.value.message and "Root" in info.value.message
    after = hub.server.fleet.hub_trust.get("fleet-ca")
    assert (after.sha1_hex, after.etag, after.is_verified) == (before.sha1_hex, before.etag, True)


def _builtin(hub: Hub) -> HubConnector:
    return hub.server.fleet.hub_links.connector_for(LinkConnection("local", LinkKind.BUILTIN))


def test_an_unverified_upload_of_the_same_certificate_is_proven(hub: Hub) -> None:
    fleet = hub.server.fleet
    fleet.hub_trust.upload("fleet-issuing", hub.cas["issuing"].certificate_der)

    trusted = hub.connector().trust_ca("fleet-issuing", hub.pem("issuing"), hub.prover("issuing"))

    assert trusted.verified is True
    assert fleet.hub_trust.get("fleet-issuing").is_verified is True


def test_an_etag_race_re_reads_and_retries_once(hub: Hub) -> None:
    fleet = hub.server.fleet
    prove = hub.prover("issuing")
    raced: list[str] = []

    def prove_while_another_writer_renews_the_code(code: str) -> bytes:
        if not raced:
            # Another writer asks for a new code: the etag the connector holds goes stale,
            # so its verify gets Azure's 412 and it must start over from a fresh read.
            raced.append(fleet.hub_trust.generate_verification_code("fleet-issuing").etag)
        return prove(code)

    trusted = hub.connector().trust_ca(
        "fleet-issuing", hub.pem("issuing"), prove_while_another_writer_renews_the_code
    )

    assert trusted.verified is True
    assert len(hub.proofs) == 2  # the stale proof, then the one that was accepted
    assert fleet.hub_trust.get("fleet-issuing").etag != raced[0]


def test_remove_deletes_once_and_then_reports_nothing_there(hub: Hub) -> None:
    connector = hub.connector()
    connector.trust_ca("fleet-issuing", hub.pem("issuing"), hub.prover("issuing"))

    assert connector.remove_ca("fleet-issuing") is True
    assert hub.server.fleet.hub_trust.list() == []
    assert connector.remove_ca("fleet-issuing") is False


# --------------------------------------------------------------------------- devices


def test_register_disable_enable_and_pin_a_device(hub: Hub) -> None:
    connector = hub.connector()
    devices = hub.server.fleet.hub_devices

    connector.register_device("sensor-1")
    created = devices.get("sensor-1")
    assert (created.auth_type, created.status) == ("certificateAuthority", "enabled")
    connector.register_device("sensor-1")  # kept as it is
    assert devices.get("sensor-1").etag == created.etag

    assert connector.set_device_enabled("sensor-1", False, reason="certificate revoked") is True
    disabled = devices.get("sensor-1")
    assert (disabled.status, disabled.status_reason) == ("disabled", "certificate revoked")
    assert connector.set_device_enabled("sensor-1", False) is True  # already: no write
    assert devices.get("sensor-1").etag == disabled.etag
    assert connector.set_device_enabled("sensor-1", True) is True
    assert devices.get("sensor-1").status == "enabled"

    pin = "ab:" + "12" * 19
    assert connector.set_device_authentication("sensor-1", DeviceAuthentication(pin)) is True
    pinned = devices.get("sensor-1")
    assert (pinned.auth_type, pinned.primary_thumbprint) == ("selfSigned", "AB" + "12" * 19)
    assert connector.set_device_authentication("sensor-1", DeviceAuthentication()) is True
    back = devices.get("sensor-1")
    assert (back.auth_type, back.primary_thumbprint) == ("certificateAuthority", None)


def test_a_missing_device_is_reported_not_created(hub: Hub) -> None:
    connector = hub.connector()
    assert connector.set_device_enabled("nobody", False) is False
    assert connector.set_device_authentication("nobody", DeviceAuthentication()) is False
    assert hub.server.fleet.hub_devices.list() == []


def test_a_connection_string_serves_the_registry_only(hub: Hub) -> None:
    fleet = hub.server.fleet
    # The connection string's HostName (localhost:<port>) is the service URL.
    connection = fleet.hub_sas.connection_string("registryReadWrite")
    connector = hub.connector(credential=None, connection_string=connection, service_url=None)

    connector.register_device("sensor-2")
    assert connector.set_device_enabled("sensor-2", False, reason="revoked") is True
    assert fleet.hub_devices.get("sensor-2").status == "disabled"
    health = connector.health()
    assert health.reachable is True and "1 devices" in health.detail

    with pytest.raises(ConnectorError) as no_certificates:
        connector.trust_ca("fleet-issuing", hub.pem("issuing"), hub.prover("issuing"))
    assert no_certificates.value.code == "link.credential_missing"
    assert "registry only" in no_certificates.value.message


def test_a_read_only_policy_is_refused_naming_the_permission(hub: Hub) -> None:
    connection = hub.server.fleet.hub_sas.connection_string("registryRead")
    connector = hub.connector(credential=None, connection_string=connection)
    with pytest.raises(ConnectorError) as refused:
        connector.register_device("sensor-3")
    assert refused.value.code == "link.forbidden"
    assert "RegistryWrite" in refused.value.message
    assert connection.split("SharedAccessKey=")[1] not in refused.value.message


# --------------------------------------------------------------------------- health and errors


def test_health_reads_the_hub_resource(hub: Hub) -> None:
    health = hub.connector().health()
    assert health.reachable is True
    assert hub.identity.hub_name in health.detail and "localhost" in health.detail


def test_an_unreachable_hub_is_transient(hub: Hub) -> None:
    dead = _closed_port_url()
    health = hub.connector(management_url=dead).health()
    assert health.reachable is False and dead in health.detail

    with pytest.raises(ConnectorError) as registry:
        hub.connector(service_url=dead).register_device("sensor-4")
    assert registry.value.code == "link.unreachable"
    assert registry.value.transient is True


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"subscription_id": "11111111-2222-3333-4444-555555555555"}, "subscription"),
        ({"resource_group": "no-such-group"}, "resource group"),
        ({"hub_name": "no-such-hub"}, "IoT hub"),
    ],
    ids=["subscription", "resource-group", "hub"],
)
def test_an_unknown_place_is_named(hub: Hub, changes: dict[str, str], named: str) -> None:
    connector = hub.connector(**changes)
    (value,) = changes.values()
    for call in (
        connector.health,
        lambda: connector.trust_ca("c", hub.pem("issuing"), hub.prover("issuing")),
    ):
        with pytest.raises(ConnectorError) as missing:
            call()
        assert missing.value.code == "link.not_found"
        assert missing.value.transient is False
        assert f"{named} {value!r}" in missing.value.message


def test_a_malformed_subscription_is_named(hub: Hub) -> None:
    with pytest.raises(ConnectorError) as malformed:
        hub.connector(subscription_id="not-a-guid").health()
    assert malformed.value.code == "link.bad_subscription"
    assert "'not-a-guid'" in malformed.value.message


def test_a_principal_without_the_roles_is_told_which_it_needs(hub: Hub) -> None:
    secret = _stranger(hub)
    connector = hub.connector(client_id=STRANGER, client_secret=secret)

    with pytest.raises(ConnectorError) as certificates:
        connector.trust_ca("fleet-issuing", hub.pem("issuing"), hub.prover("issuing"))
    assert certificates.value.code == "link.forbidden"
    assert "Microsoft.Devices/IotHubs/certificates/*" in certificates.value.message
    assert "Contributor" in certificates.value.message

    # Reading the registry is allowed (IoT Hub Data Reader); writing is not.
    assert connector.set_device_enabled("nobody", False) is False
    with pytest.raises(ConnectorError) as registry:
        connector.register_device("sensor-5")
    assert registry.value.code == "link.forbidden"
    assert "IoT Hub Registry Contributor" in registry.value.message
    assert secret not in registry.value.message


def test_a_token_for_the_wrong_audience_is_refused(hub: Hub) -> None:
    registry = hub.connector(registry_scope="https://management.azure.com/.default")
    with pytest.raises(ConnectorError) as wrong_registry:
        registry.register_device("sensor-6")
    assert wrong_registry.value.code == "link.unauthorized"
    assert "https://management.azure.com/" in wrong_registry.value.message

    management = hub.connector(management_scope="https://vault.azure.net/.default")
    with pytest.raises(ConnectorError) as wrong_management:
        management.health()
    assert wrong_management.value.code == "link.unauthorized"
    assert "InvalidAuthenticationTokenAudience" in wrong_management.value.message


@pytest.mark.usefixtures("quiet_identity")
def test_a_wrong_secret_and_an_incomplete_credential_are_clear(hub: Hub) -> None:
    wrong = "fpk_" + uuid.uuid4().hex
    with pytest.raises(ConnectorError) as refused:
        hub.connector(client_secret=wrong).health()
    assert refused.value.code == "link.credential"
    assert wrong not in refused.value.message

    incomplete = AzureCredentialConfig(kind=CredentialKind.CLIENT_SECRET, tenant_id="t")
    with pytest.raises(ConnectorError) as missing:
        AzureHubConnector(hub.config(credential=incomplete))
    assert missing.value.code == "link.credential_incomplete"
    assert "client_id, client_secret" in missing.value.message


def _certificate_file(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    """A PEM file with a key and its self-signed certificate, as CertificateCredential reads."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetpki link")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(key_pem + cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


@pytest.mark.usefixtures("quiet_identity")
def test_a_certificate_credential_reaches_the_token_endpoint(hub: Hub, tmp_path: Path) -> None:
    def credential(path: str) -> AzureCredentialConfig:
        return AzureCredentialConfig(
            kind=CredentialKind.CERTIFICATE,
            tenant_id=hub.identity.tenant_id,
            client_id=LOCAL_ADMIN_ID,
            certificate_path=path,
            authority_host=hub.server.base_url,
        )

    # azure-identity signs its client assertion with RS256: an EC key is refused at once.
    ec_file = _certificate_file(tmp_path / "ec.pem", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ConnectorError) as unusable:
        AzureHubConnector(hub.config(credential=credential(ec_file)))
    assert unusable.value.code == "link.bad_credential"
    assert "RSA" in unusable.value.message

    # fleetpki's endpoint takes client secrets only: the signed assertion gets its OAuth
    # refusal, reported as a credential error.
    rsa_file = _certificate_file(
        tmp_path / "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    with pytest.raises(ConnectorError) as refused:
        hub.connector(credential=credential(rsa_file)).health()
    assert refused.value.code == "link.credential"
