"""Azure's management plane on the built-in hub, driven by the unmodified Azure SDKs.

``azure-mgmt-iothub``'s IotHubClient and ``azure-identity``'s ClientSecretCredential
talk to a real ``fleetpki serve`` over TLS: the credential gets its token from
fleetpki's own client-credentials endpoint, the client runs Azure's whole
proof-of-possession flow on the hub's certificates, and every refusal is the one Azure
gives (status and code).
"""

from __future__ import annotations

import datetime as dt
import gc
import secrets
import ssl
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.identity import ClientSecretCredential
from azure.mgmt.iothub import IotHubClient
from azure.mgmt.iothub.models import (
    CertificateDescription,
    CertificateProperties,
    CertificateVerificationDescription,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetpki.services.ca_views import CAView
from fleetpki.services.context import LOCAL_ADMIN_ID, Actor
from fleetpki.services.hub_management import HubIdentity
from support.api import live_server_fixture  # noqa: F401 (a fixture)
from support.pkilint import assert_lints_clean
from support.server import LiveServer, start_server

pytestmark = pytest.mark.slow

STRANGER = "7d1f7a52-2c1b-4a63-9c55-0c2f1d6e8a11"


@dataclass(frozen=True, slots=True)
class Arm:
    """A server with the token endpoint on, and what a client needs to reach it."""

    server: LiveServer
    identity: HubIdentity
    issuing: CAView
    #: Where the keystore holds the issuing CA's key: proofs of possession are signed with it.
    issuing_key_ref: str
    # Clients and credentials close before the server stops, so that no keep-alive
    # connection outlives it.
    opened: ExitStack

    @property
    def ca(self) -> str:
        return str(self.server.ca_bundle)

    def credential(
        self, client_id: str = LOCAL_ADMIN_ID, secret: str | None = None, **kwargs: Any
    ) -> Any:
        credential = ClientSecretCredential(
            self.identity.tenant_id,
            client_id,
            secret or self.server.admin_token,
            authority=self.server.base_url,
            disable_instance_discovery=True,
            connection_verify=self.ca,
            retry_total=0,
            **kwargs,
        )
        self.opened.callback(credential.close)
        return credential

    def client(self, credential: Any = None, **kwargs: Any) -> IotHubClient:
        return _client(
            self.opened,
            self.server,
            credential or self.credential(),
            kwargs.pop("subscription_id", self.identity.subscription_id),
            **kwargs,
        )


@contextmanager
def _sdk_clients() -> Iterator[ExitStack]:
    """Close the SDK clients opened in the block, and the sockets their errors still hold.

    An azure-core error keeps its response, and with it a pooled socket, in a reference
    cycle; collecting it closes the socket, so the server's graceful stop does not wait.
    """
    with ExitStack() as opened:
        opened.callback(gc.collect)  # runs last: after every close below
        yield opened


def _client(
    opened: ExitStack, server: LiveServer, credential: Any, subscription_id: str, **kwargs: Any
) -> IotHubClient:
    client = IotHubClient(
        credential,
        subscription_id,
        base_url=server.base_url,
        connection_verify=str(server.ca_bundle),
        retry_total=0,
        **kwargs,
    )
    opened.callback(client.close)
    return client


@pytest.fixture(name="arm")
def arm_fixture(tmp_path: Path, key_passphrase: None) -> Iterator[Arm]:
    with start_server(tmp_path / "home", token_endpoint_enabled=True) as server:
        fleet = server.fleet
        (issuing,) = (c for c in fleet.cas.list() if c.tier == "issuing")
        # No use case hands out a CA's key reference (only the hub's own trust flow
        # signs proofs), so the test reads it from the store to sign proofs itself.
        with fleet.store.transaction() as tx:
            record = tx.cas.get(issuing.id)
            assert record is not None
            key_ref = record.key_ref
        with _sdk_clients() as opened:
            yield Arm(server, fleet.hub_management.show(), issuing, key_ref, opened)


class StaticToken:
    """A TokenCredential that hands the SDK a token it was given (for refused tokens)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + 3600)


def _pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def _proof(arm: Arm, code: str) -> str:
    """A verification certificate: CN is ``code``, signed by the CA's key (ref §4.1 step 3)."""
    ca_cert = arm.issuing.certificate
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)]))
        .issuer_name(ca_cert.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    signed = arm.server.fleet.keystore.signer(arm.issuing_key_ref).sign_certificate(builder)
    return signed.public_bytes(serialization.Encoding.PEM).decode()


def _upload(arm: Arm, client: IotHubClient, name: str = "issuing") -> Any:
    body = CertificateDescription(
        properties=CertificateProperties(certificate=_pem(arm.issuing.certificate_der))
    )
    return client.certificates.create_or_update(
        arm.identity.resource_group, arm.identity.hub_name, name, body
    )


def test_the_hub_resource_is_azures_shape(arm: Arm) -> None:
    hub = arm.client().iot_hub_resource.get(arm.identity.resource_group, arm.identity.hub_name)
    assert hub.name == arm.identity.hub_name
    assert hub.type == "Microsoft.Devices/IotHubs"
    assert hub.id == arm.identity.resource_id
    assert hub.id.startswith(f"/subscriptions/{arm.identity.subscription_id}/resourceGroups/")
    assert hub.properties.host_name == "localhost"
    assert hub.sku.name == "S1"


def test_proof_of_possession_through_the_sdk(arm: Arm) -> None:
    client = arm.client()
    rg, hub = arm.identity.resource_group, arm.identity.hub_name
    ca_cert = x509.load_der_x509_certificate(arm.issuing.certificate_der)

    created = _upload(arm, client)
    assert created.name == "issuing"
    assert created.type == "Microsoft.Devices/IotHubs/Certificates"
    assert created.id == f"{arm.identity.resource_id}/certificates/issuing"
    assert created.properties.is_verified is False
    assert created.properties.thumbprint == arm.issuing.sha1_hex.upper()
    assert created.properties.expiry == ca_cert.not_valid_after_utc
    assert created.properties.subject.startswith("CN=")
    # The SDK parsed the RFC 1123 dates into aware datetimes.
    assert created.properties.created.tzinfo is not None

    nonce = client.certificates.generate_verification_code(rg, hub, "issuing", created.etag)
    code = nonce.properties.verification_code
    assert len(code) == 40 and int(code, 16) >= 0
    assert nonce.etag != created.etag
    assert nonce.properties.is_verified is False

    verified = client.certificates.verify(
        rg,
        hub,
        "issuing",
        nonce.etag,
        CertificateVerificationDescription(certificate=_proof(arm, code)),
    )
    assert verified.properties.is_verified is True
    assert verified.etag not in (created.etag, nonce.etag)

    listed = client.certificates.list_by_iot_hub(rg, hub).value
    assert [(c.name, c.properties.is_verified, c.etag) for c in listed] == [
        ("issuing", True, verified.etag)
    ]
    got = client.certificates.get(rg, hub, "issuing")
    assert got.etag == verified.etag
    assert got.properties.thumbprint == created.properties.thumbprint

    # The hub now authenticates devices of this CA (ref §4.2: only verified CAs do).
    fleet = arm.server.fleet
    with fleet.store.transaction() as tx:
        anchors = fleet.hub_trust.trust_anchors(tx)
    assert [a.sha1_hex.upper() for a in anchors.verified] == [arm.issuing.sha1_hex.upper()]

    # The certificate the hub hands back is the CA certificate fleetpki made.
    returned = x509.load_pem_x509_certificate(got.properties.certificate.encode())
    der = returned.public_bytes(serialization.Encoding.DER)
    assert der == arm.issuing.certificate_der
    assert_lints_clean("certificate", der)


def test_etags_guard_updates_and_deletes(arm: Arm) -> None:
    client = arm.client()
    rg, hub = arm.identity.resource_group, arm.identity.hub_name
    created = _upload(arm, client)
    nonce = client.certificates.generate_verification_code(rg, hub, "issuing", created.etag)
    body = CertificateDescription(
        properties=CertificateProperties(
            certificate=_pem(arm.issuing.certificate_der), is_verified=True
        )
    )

    with pytest.raises(HttpResponseError) as stale:
        client.certificates.create_or_update(rg, hub, "issuing", body, if_match=created.etag)
    assert stale.value.status_code == 412
    assert stale.value.error is not None and stale.value.error.code == 412001
    assert "Invalid ETag supplied" in str(stale.value.error.message)

    # Azure requires If-Match to replace an existing certificate.
    with pytest.raises(HttpResponseError) as missing:
        client.certificates.create_or_update(rg, hub, "issuing", body)
    assert missing.value.status_code == 412

    replaced = client.certificates.create_or_update(rg, hub, "issuing", body, if_match=nonce.etag)
    assert replaced.properties.is_verified is True
    assert replaced.etag != nonce.etag
    assert replaced.properties.created == created.properties.created

    with pytest.raises(HttpResponseError) as stale_delete:
        client.certificates.delete(rg, hub, "issuing", nonce.etag)
    assert stale_delete.value.status_code == 412
    assert client.certificates.get(rg, hub, "issuing").etag == replaced.etag

    client.certificates.delete(rg, hub, "issuing", replaced.etag)
    with pytest.raises(ResourceNotFoundError) as gone:
        client.certificates.get(rg, hub, "issuing")
    assert gone.value.status_code == 404
    # Deleting what is not there does nothing (the spec's 204), and the SDK accepts it.
    client.certificates.delete(rg, hub, "issuing", "*")


def test_a_verification_certificate_for_another_code_is_refused(arm: Arm) -> None:
    client = arm.client()
    rg, hub = arm.identity.resource_group, arm.identity.hub_name
    created = _upload(arm, client)
    nonce = client.certificates.generate_verification_code(rg, hub, "issuing", created.etag)
    other_code = secrets.token_hex(20).upper()
    wrong = CertificateVerificationDescription(certificate=_proof(arm, other_code))

    with pytest.raises(HttpResponseError) as refused:
        client.certificates.verify(rg, hub, "issuing", nonce.etag, wrong)
    assert refused.value.status_code == 400
    assert refused.value.error is not None and refused.value.error.code == 400053
    assert "Proof-Of-Possession failed" in str(refused.value.error.message)
    after = client.certificates.get(rg, hub, "issuing")
    assert after.properties.is_verified is False
    assert after.etag == nonce.etag


def test_unknown_subscription_resource_group_and_hub_are_azures_404s(arm: Arm) -> None:
    client = arm.client()
    rg, hub = arm.identity.resource_group, arm.identity.hub_name

    with pytest.raises(ResourceNotFoundError) as no_hub:
        client.iot_hub_resource.get(rg, "not-this-hub")
    assert no_hub.value.error is not None and no_hub.value.error.code == "ResourceNotFound"
    with pytest.raises(ResourceNotFoundError) as no_parent:
        client.certificates.list_by_iot_hub(rg, "not-this-hub")
    assert no_parent.value.error is not None
    assert no_parent.value.error.code == "ParentResourceNotFound"
    with pytest.raises(ResourceNotFoundError) as no_group:
        client.certificates.list_by_iot_hub("no-such-group", hub)
    assert no_group.value.error is not None
    assert no_group.value.error.code == "ResourceGroupNotFound"

    other = arm.client(subscription_id=str(uuid.uuid4()))
    with pytest.raises(ResourceNotFoundError) as no_sub:
        other.iot_hub_resource.get(rg, hub)
    assert no_sub.value.error is not None and no_sub.value.error.code == "SubscriptionNotFound"

    malformed = arm.client(subscription_id="not-a-guid")
    with pytest.raises(HttpResponseError) as bad_sub:
        malformed.iot_hub_resource.get(rg, hub)
    assert bad_sub.value.status_code == 400
    assert bad_sub.value.error is not None and bad_sub.value.error.code == "InvalidSubscriptionId"

    # Names are case-insensitive, as Azure's are.
    assert client.iot_hub_resource.get(rg.upper(), hub.upper()).name == hub


def test_bad_bearer_tokens_are_401(arm: Arm) -> None:
    rg, hub = arm.identity.resource_group, arm.identity.hub_name
    with pytest.raises(ClientAuthenticationError) as garbage:
        arm.client(StaticToken("not-a-jwt")).iot_hub_resource.get(rg, hub)
    assert garbage.value.status_code == 401
    assert garbage.value.error is not None
    assert garbage.value.error.code == "InvalidAuthenticationToken"

    # Right issuer and claims, but signed by a key fleetpki does not hold.
    real = arm.credential().get_token("https://management.azure.com/.default").token
    claims = jwt.decode(real, options={"verify_signature": False})
    forged = jwt.encode(
        claims,
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": jwt.get_unverified_header(real)["kid"]},
    )
    with pytest.raises(ClientAuthenticationError) as forged_refused:
        arm.client(StaticToken(forged)).certificates.list_by_iot_hub(rg, hub)
    assert forged_refused.value.status_code == 401

    # A token from an issuer fleetpki does not trust.
    foreign = jwt.encode(
        {**claims, "iss": "https://sts.example/tenant/"},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
    )
    with pytest.raises(ClientAuthenticationError) as foreign_refused:
        arm.client(StaticToken(foreign)).iot_hub_resource.get(rg, hub)
    assert foreign_refused.value.error is not None
    assert foreign_refused.value.error.code == "InvalidAuthenticationTokenTenant"


def test_a_token_for_another_audience_is_401(arm: Arm) -> None:
    rg, hub = arm.identity.resource_group, arm.identity.hub_name
    client = arm.client(credential_scopes=["https://vault.azure.net/.default"])
    with pytest.raises(ClientAuthenticationError) as refused:
        client.iot_hub_resource.get(rg, hub)
    assert refused.value.status_code == 401
    assert refused.value.error is not None
    assert refused.value.error.code == "InvalidAuthenticationTokenAudience"
    assert "https://vault.azure.net/" in str(refused.value.error.message)


def test_a_principal_that_is_not_admin_gets_403(arm: Arm) -> None:
    fleet = arm.server.fleet
    fleet.principals.add(Actor.local_admin(), STRANGER, "app", principal_type="ServicePrincipal")
    token = fleet.principals.create_token(Actor.local_admin(), STRANGER)
    client = arm.client(arm.credential(STRANGER, token.secret))
    with pytest.raises(HttpResponseError) as refused:
        client.certificates.list_by_iot_hub(arm.identity.resource_group, arm.identity.hub_name)
    assert refused.value.status_code == 403
    assert refused.value.error is not None and refused.value.error.code == "AuthorizationFailed"


def test_the_token_endpoint_refuses_bad_credentials_with_oauth_errors(arm: Arm) -> None:
    # azure-identity logs the refusal with its exception, which the log capture keeps
    # (and with it the pooled socket) past the test: this credential does not keep alive.
    refused = arm.credential(
        secret="fpk_" + secrets.token_urlsafe(32), headers={"Connection": "close"}
    )
    with pytest.raises(ClientAuthenticationError) as wrong_secret:
        refused.get_token("https://management.azure.com/.default")
    assert "client secret is not valid" in str(wrong_secret.value)

    token_url = f"{arm.server.base_url}/{arm.identity.tenant_id}/oauth2/v2.0/token"
    form = {
        "grant_type": "client_credentials",
        "client_id": STRANGER,
        "client_secret": arm.server.admin_token,  # the admin's secret, another client's id
        "scope": "https://management.azure.com/.default",
    }
    with httpx.Client(verify=ssl.create_default_context(cafile=arm.ca)) as http:
        other = http.post(token_url, data=form)
        assert other.status_code == 401
        assert other.json()["error"] == "invalid_client"
        grant = http.post(token_url, data={**form, "grant_type": "password"})
        assert (grant.status_code, grant.json()["error"]) == (400, "unsupported_grant_type")
        scope = http.post(token_url, data={**form, "client_id": LOCAL_ADMIN_ID, "scope": "openid"})
        assert (scope.status_code, scope.json()["error"]) == (400, "invalid_scope")
        tenant = http.post(
            f"{arm.server.base_url}/{uuid.uuid4()}/oauth2/v2.0/token",
            data={**form, "client_id": LOCAL_ADMIN_ID},
        )
        assert (tenant.status_code, tenant.json()["error"]) == (400, "invalid_tenant")
        # HTTP Basic client authentication (RFC 6749 §2.3.1) works as well as the body.
        basic = http.post(
            token_url,
            data={"grant_type": "client_credentials", "scope": form["scope"]},
            auth=(LOCAL_ADMIN_ID, arm.server.admin_token),
        )
        assert basic.status_code == 200 and basic.json()["token_type"] == "Bearer"
        assert basic.headers["cache-control"] == "no-store"


def test_raw_requests_without_credentials_or_api_version(arm: Arm) -> None:
    url = f"{arm.server.base_url}{arm.identity.resource_id}/certificates"
    with httpx.Client(verify=ssl.create_default_context(cafile=arm.ca)) as http:
        anonymous = http.get(url, params={"api-version": "2023-06-30"})
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "AuthenticationFailed"
        assert anonymous.headers["www-authenticate"].startswith("Bearer ")
        no_version = http.get(url, headers={"Authorization": f"Bearer {arm.server.admin_token}"})
        assert no_version.status_code == 400
        assert no_version.json()["error"]["code"] == "MissingApiVersionParameter"


def test_off_by_default_and_api_tokens_still_work(live_server: LiveServer) -> None:
    identity = live_server.fleet.hub_management.show()
    with httpx.Client(verify=ssl.create_default_context(cafile=str(live_server.ca_bundle))) as http:
        discovery = http.get(
            f"{live_server.base_url}/{identity.tenant_id}/v2.0/.well-known/openid-configuration"
        )
    assert discovery.status_code == 404
    # A fleetpki API token is a bearer credential of its own on these routes.
    with _sdk_clients() as opened:
        client = _client(
            opened, live_server, StaticToken(live_server.admin_token), identity.subscription_id
        )
        listed = client.certificates.list_by_iot_hub(identity.resource_group, identity.hub_name)
    assert listed.value == []
