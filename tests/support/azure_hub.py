"""A ``fleetpki serve`` with its token endpoint on, and azure connectors pointed at it.

The connector tests (tests/connectors) drive the built-in hub through Azure's own SDKs
as a hub link would drive Azure IoT Hub: this module holds the server fixture, the
link configuration a user would write for it, and a proof signer over the CA's key.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetpki.connectors.azure import AzureHubConnector
from fleetpki.connectors.azure_config import (
    AzureCredentialConfig,
    AzureHubConfig,
    CredentialKind,
)
from fleetpki.connectors.connector import ProofSigner
from fleetpki.services.ca_views import CAView
from fleetpki.services.context import LOCAL_ADMIN_ID
from fleetpki.services.hub_management import HubIdentity
from support.server import LiveServer, start_server

__all__ = ["Hub", "hub_fixture", "quiet_identity_fixture"]


@dataclass
class Hub:
    """A server with its token endpoint on, and what a link needs to reach it."""

    server: LiveServer
    identity: HubIdentity
    cas: dict[str, CAView]
    key_refs: dict[str, str]
    opened: ExitStack
    proofs: list[str] = field(default_factory=list)

    def config(self, **changes: Any) -> AzureHubConfig:
        """The link to this hub as a user would configure it, with ``changes``."""
        credential = AzureCredentialConfig(
            kind=CredentialKind.CLIENT_SECRET,
            tenant_id=self.identity.tenant_id,
            client_id=changes.pop("client_id", LOCAL_ADMIN_ID),
            client_secret=changes.pop("client_secret", self.server.admin_token),
            authority_host=self.server.base_url,
        )
        config = AzureHubConfig(
            subscription_id=self.identity.subscription_id,
            resource_group=self.identity.resource_group,
            hub_name=self.identity.hub_name,
            credential=credential,
            management_url=self.server.base_url,
            service_url=self.server.base_url,
            ca_bundle=str(self.server.ca_bundle),
        )
        return replace(config, **changes)

    def connector(self, **changes: Any) -> AzureHubConnector:
        connector = AzureHubConnector(self.config(**changes))
        self.opened.callback(connector.close)
        return connector

    def pem(self, tier: str) -> bytes:
        return self.cas[tier].certificate.public_bytes(serialization.Encoding.PEM)

    def prover(self, tier: str) -> ProofSigner:
        """Sign ``CN=<code>`` with the CA's key through the keystore (ref §4.1 step 3)."""
        ca, key_ref = self.cas[tier], self.key_refs[tier]

        def prove(code: str) -> bytes:
            self.proofs.append(code)
            now = dt.datetime.now(dt.UTC)
            builder = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)]))
                .issuer_name(ca.certificate.subject)
                .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
            )
            signed = self.server.fleet.keystore.signer(key_ref).sign_certificate(builder)
            return signed.public_bytes(serialization.Encoding.DER)

        return prove


@pytest.fixture(name="hub")
def hub_fixture(tmp_path: Path, key_passphrase: None) -> Iterator[Hub]:
    with start_server(tmp_path / "home", token_endpoint_enabled=True) as server:
        fleet = server.fleet
        cas = {c.tier: c for c in fleet.cas.list()}
        # No use case hands out a CA's key reference, so the test reads it from the
        # store to sign proofs itself (as tests/api/test_arm.py does).
        key_refs = {}
        with fleet.store.transaction() as tx:
            for tier, ca in cas.items():
                record = tx.cas.get(ca.id)
                assert record is not None
                key_refs[tier] = record.key_ref
        with ExitStack() as opened:
            # Runs last: an azure-core error holds a pooled socket in a reference cycle.
            opened.callback(gc.collect)
            yield Hub(server, fleet.hub_management.show(), cas, key_refs, opened)


@pytest.fixture(name="quiet_identity")
def quiet_identity_fixture() -> Iterator[None]:
    """Keep azure-identity's refusal logs out of the log capture.

    azure-identity logs a refused token request with the exception among the record's
    arguments, and the exception's response holds a socket; kept by the capture past
    the test, it would make the server's graceful stop wait for that connection.
    """
    logger = logging.getLogger("azure.identity")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    yield
    logger.setLevel(level)
