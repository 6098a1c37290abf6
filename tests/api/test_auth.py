"""Authentication: fleetpki API tokens and OIDC JWTs checked against a JWKS the tests make."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from fleetpki.api import create_app
from fleetpki.api.oidc import OIDCVerifier
from fleetpki.application import FleetPKI
from fleetpki.store.models import Principal
from support.api import TestClient
from support.database import raw_session

ISSUER = "https://login.example.test/tenant/v2.0"
AUDIENCE = "https://management.core.windows.net/"


@pytest.fixture
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def oidc_client(
    sqlite_fleet: FleetPKI, signing_key: rsa.RSAPrivateKey, tmp_path: Path
) -> Iterator[TestClient]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    app = create_app(sqlite_fleet, oidc=OIDCVerifier(ISSUER, AUDIENCE, str(jwks)))
    with TestClient(app, base_url="https://testserver") as client:
        yield client


def _jwt(key: rsa.RSAPrivateKey, **overrides: Any) -> str:
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + dt.timedelta(minutes=10)).timestamp()),
        "oid": str(uuid.uuid4()),
        "sub": "opaque-subject",
        "upn": "carol@example.test",
    }
    kid = overrides.pop("kid", "k1")
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def test_first_seen_oidc_principal_is_created_with_upn(
    oidc_client: TestClient, signing_key: rsa.RSAPrivateKey, sqlite_fleet: FleetPKI
) -> None:
    oid = str(uuid.uuid4())
    answer = oidc_client.get(
        "/api/CA/GetAvailableSSLCAs",
        headers={"Authorization": f"Bearer {_jwt(signing_key, oid=oid)}"},
    )
    assert answer.status_code == 200, answer.text
    with raw_session(sqlite_fleet) as session:
        principal = session.get(Principal, oid)
        assert principal is not None and principal.friendly_name == "carol@example.test"


def test_sub_is_used_without_oid_and_name_without_upn(
    oidc_client: TestClient, signing_key: rsa.RSAPrivateKey, sqlite_fleet: FleetPKI
) -> None:
    sub = str(uuid.uuid4())
    token = _jwt(signing_key, oid=None, upn=None, sub=sub, name="Dana")
    answer = oidc_client.get("/v1/domains", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    with raw_session(sqlite_fleet) as session:
        assert session.get(Principal, sub).friendly_name == "Dana"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"aud": "https://someone-else"}, "auth.bad_token"),
        ({"iss": "https://evil.example"}, "auth.bad_token"),
        ({"exp": 1_000_000_000}, "auth.bad_token"),
        ({"kid": "unknown"}, "auth.bad_token"),
    ],
)
def test_bad_oidc_tokens_are_401_and_create_nobody(
    oidc_client: TestClient,
    signing_key: rsa.RSAPrivateKey,
    sqlite_fleet: FleetPKI,
    overrides: dict[str, Any],
    code: str,
) -> None:
    with raw_session(sqlite_fleet) as session:
        before = len(list(session.scalars(select(Principal))))
    answer = oidc_client.get(
        "/v1/domains", headers={"Authorization": f"Bearer {_jwt(signing_key, **overrides)}"}
    )
    assert answer.status_code == 401
    assert answer.json()["code"] == code
    assert answer.headers["www-authenticate"].startswith("Bearer")
    with raw_session(sqlite_fleet) as session:
        assert len(list(session.scalars(select(Principal)))) == before


def test_a_token_signed_by_another_key_is_refused(oidc_client: TestClient) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    answer = oidc_client.get("/v1/domains", headers={"Authorization": f"Bearer {_jwt(other)}"})
    assert answer.status_code == 401


@pytest.mark.parametrize(
    "header", ["", "Basic dXNlcjpwYXNz", "Bearer ", "Bearer not.a.jwt", "Bearer fpk_wrong"]
)
def test_missing_or_bad_credentials_are_401(oidc_client: TestClient, header: str) -> None:
    headers = {"Authorization": header} if header else {}
    answer = oidc_client.get("/api/CA/GetMyDomains", headers=headers)
    assert answer.status_code == 401
    assert answer.json()["code"].startswith("auth.")


def test_non_admin_gets_403_on_the_audit_log(
    oidc_client: TestClient, signing_key: rsa.RSAPrivateKey
) -> None:
    answer = oidc_client.get("/v1/audit", headers={"Authorization": f"Bearer {_jwt(signing_key)}"})
    assert answer.status_code == 403
    assert answer.json()["code"] == "auth.admin_required"
