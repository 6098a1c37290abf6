"""Fixtures for the API tests: the app in-process with tokens, a real TLS server, row counts."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fleetpki.api import create_app
from fleetpki.application import FleetPKI
from fleetpki.services.context import LOCAL_ADMIN_ID, Actor
from fleetpki.store import hub_models, models
from support.database import raw_session
from support.server import LiveServer, start_server

with warnings.catch_warnings():
    # Starlette 1.x warns that its test client will move from httpx to httpx2; the
    # client still works on httpx, which is what fleetpki itself uses.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@dataclass(frozen=True, slots=True)
class Api:
    """An in-process app with tokens for the admin, alice and bob."""

    client: TestClient
    fleet: FleetPKI
    admin: str
    alice: str
    bob: str
    ca_id: str
    template_id: str

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        """The Authorization header for ``token``."""
        return {"Authorization": f"Bearer {token}"}


#: The principals the root conftest's fleets hold (kept equal to ``conftest.ALICE``/``BOB``).
ALICE = "11111111-1111-4111-8111-111111111111"
BOB = "22222222-2222-4222-8222-222222222222"

__all__ = ["ALICE", "BOB", "Api", "TestClient", "api_fixture", "live_server_fixture", "row_counts"]


def _token(fleet: FleetPKI, principal: str) -> str:
    return fleet.principals.create_token(Actor.local_admin(), principal).secret


@pytest.fixture(name="api")
def api_fixture(sqlite_fleet: FleetPKI) -> Iterator[Api]:
    """The app for ``sqlite_fleet``, called in-process (no sockets)."""
    fleet = sqlite_fleet
    issuing = next(c for c in fleet.cas.list() if c.tier == "issuing")
    ca_id, template_id = issuing.id, fleet.templates.list(issuing.id)[0].id
    app = create_app(fleet)
    with TestClient(app, base_url="https://testserver") as client:
        yield Api(
            client,
            fleet,
            _token(fleet, LOCAL_ADMIN_ID),
            _token(fleet, ALICE),
            _token(fleet, BOB),
            ca_id,
            template_id,
        )


_COUNTED = (
    models.Principal,
    models.ApiToken,
    models.DomainRecord,
    models.DomainMember,
    models.CertificateRecord,
    models.CAGeneration,
    models.AuditEntry,
    models.OutboxEvent,
    models.UsedTokenId,
    hub_models.HubCA,
    hub_models.HubMessage,
    hub_models.HubC2DMessage,
    hub_models.HubLink,
    hub_models.HubLinkCA,
    hub_models.HubLinkGeneration,
    hub_models.HubDevice,
    hub_models.ProvisioningEnrollment,
    hub_models.ProvisioningRegistration,
    hub_models.ProvisioningOperation,
)


def row_counts(fleet: FleetPKI) -> dict[str, int]:
    """How many rows each table holds, plus how many certificates are revoked."""
    with raw_session(fleet) as session:
        counts = {
            m.__tablename__: session.scalar(select(func.count()).select_from(m)) or 0
            for m in _COUNTED
        }
        counts["revoked"] = (
            session.scalar(
                select(func.count())
                .select_from(models.CertificateRecord)
                .where(models.CertificateRecord.status == "revoked")
            )
            or 0
        )
    return counts


@pytest.fixture(name="live_server")
def live_server_fixture(tmp_path: Path, key_passphrase: None) -> Iterator[LiveServer]:
    """A real server over TLS on a free port (SQLite home)."""
    with start_server(tmp_path / "home") as server:
        yield server
