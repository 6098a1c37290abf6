"""Shared fixtures: a fleetpki home on SQLite or on a PostgreSQL server the tests start."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from fleetpki.application import FleetPKI, init_home
from fleetpki.keystore import PrivateKey
from fleetpki.pki.keys import KeySpec, generate_key
from fleetpki.services import Actor
from fleetpki.services.authority import HierarchySpec
from fleetpki.settings import Settings
from support.postgres import PostgresServer, start_postgres

ALICE = "11111111-1111-4111-8111-111111111111"
BOB = "22222222-2222-4222-8222-222222222222"

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session, started on first use."""
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleetpki.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"fleet_{os.getpid()}_{next(_db_counter)}")


@pytest.fixture(scope="session", autouse=True)
def passphrase_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where homes made by the tests keep their key passphrase: a folder of the session.

    ``init`` puts a new home's passphrase under ``$XDG_CONFIG_HOME/fleetpki/``, outside the
    home; the tests (and the ``fleetpki`` subprocesses they start, which inherit the
    environment) must not write into the user's own ``~/.config``. A systemd credential
    of the environment the tests run in is not theirs either.
    """
    folder = tmp_path_factory.mktemp("xdg-config")
    saved = {name: os.environ.get(name) for name in ("XDG_CONFIG_HOME", "CREDENTIALS_DIRECTORY")}
    os.environ["XDG_CONFIG_HOME"] = str(folder)
    os.environ.pop("CREDENTIALS_DIRECTORY", None)
    yield folder
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def key_passphrase() -> Iterator[None]:
    """Tests use generated passphrase files, never an inherited environment value."""
    saved = os.environ.pop("FLEETPKI_KEY_PASSPHRASE", None)
    yield
    if saved is not None:
        os.environ["FLEETPKI_KEY_PASSPHRASE"] = saved


def _add_alice_and_bob(app: FleetPKI) -> None:
    admin = Actor.local_admin()
    app.principals.add(admin, ALICE, "alice")
    app.principals.add(admin, BOB, "bob")


@pytest.fixture
def fleet(tmp_path: Path, database_url: str, key_passphrase: None) -> Iterator[FleetPKI]:
    """An initialised fleetpki with alice (requester/owner) and bob (a stranger)."""
    settings = Settings.default_for(tmp_path / "home", database_url)
    result = init_home(settings, HierarchySpec())
    app = result.app
    _add_alice_and_bob(app)
    yield app
    app.close()


@pytest.fixture
def sqlite_fleet(tmp_path: Path, key_passphrase: None) -> Iterator[FleetPKI]:
    """Like ``fleet`` but on SQLite only, for tests of layers above the store."""
    settings = Settings.default_for(tmp_path / "home")
    app = init_home(settings, HierarchySpec()).app
    _add_alice_and_bob(app)
    yield app
    app.close()


def make_csr(
    cn: str | None,
    *,
    key: PrivateKey | None = None,
    spec: KeySpec = KeySpec.EC_P256,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[PrivateKey, bytes]:
    """A PEM CSR for ``cn`` (and SANs) signed by ``key`` or a new key of ``spec``."""
    key = key or generate_key(spec)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if spec is KeySpec.ED25519 else hashes.SHA256()
    csr = builder.sign(key, algorithm)  # type: ignore[arg-type]
    return key, csr.public_bytes(serialization.Encoding.PEM)


def utcnow() -> dt.datetime:
    """Now, in UTC."""
    return dt.datetime.now(dt.UTC)
