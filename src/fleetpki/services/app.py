"""The application object: settings, database, keystore and clock, opened once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.orm import Session

from fleetpki.errors import ConflictError
from fleetpki.keystore import FileKeyStore, KeyStore, load_or_create_passphrase
from fleetpki.services.authority import CAUrlsConfig, HierarchySpec, create_hierarchy
from fleetpki.services.context import LOCAL_ADMIN_ID, Actor, Clock, system_clock
from fleetpki.settings import Settings
from fleetpki.store.db import Database
from fleetpki.store.models import CARecord, Principal, TemplateRecord

__all__ = ["FleetPKI", "InitResult", "init_home"]


class FleetPKI:
    """One fleetpki instance: what every use case runs against.

    Args:
        settings: the configuration.
        database: the database handle (migrated).
        keystore: custody of CA keys.
        clock: the source of "now" (injected so tests can move time).
    """

    def __init__(
        self,
        settings: Settings,
        database: Database,
        keystore: KeyStore,
        clock: Clock = system_clock,
    ) -> None:
        self.settings = settings
        self.db = database
        self.keystore = keystore
        self.clock = clock
        self.urls = CAUrlsConfig(settings.public_url)

    @classmethod
    def open(
        cls, settings: Settings, *, clock: Clock = system_clock, migrate: bool = True
    ) -> FleetPKI:
        """Open an initialised home: its database (migrated to head) and keystore.

        Raises:
            NotFoundError: ``keystore.passphrase_missing``.
            ValidationError: ``database.unreachable``, ``database.bad_url``.
        """
        database = Database(settings.database_url)
        if migrate:
            database.migrate()
        keystore = FileKeyStore(settings.keys_dir, load_or_create_passphrase(settings.home))
        return cls(settings, database, keystore, clock)

    def now(self) -> dt.datetime:
        """The current time from the injected clock."""
        return self.clock()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A database transaction: committed on success, rolled back on any error."""
        with self.db.session() as session:
            yield session

    def close(self) -> None:
        """Release database connections."""
        self.db.dispose()


@dataclass(frozen=True, slots=True)
class InitResult:
    """What ``init`` created."""

    app: FleetPKI
    root: CARecord
    issuing: CARecord
    template: TemplateRecord


def init_home(
    settings: Settings, spec: HierarchySpec | None = None, *, clock: Clock = system_clock
) -> InitResult:
    """Create a new home: configuration, database, the local admin and a CA hierarchy.

    Raises:
        ConflictError: ``home.exists`` when the home already holds a configuration
        (nothing is overwritten).
    """
    home = settings.home
    if settings.config_path.exists():
        raise ConflictError(
            "home.exists",
            f"{home} already holds a fleetpki configuration; refusing to overwrite it",
        )
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    database = Database(settings.database_url)
    database.migrate()
    keystore = FileKeyStore(settings.keys_dir, load_or_create_passphrase(home, create=True))
    app = FleetPKI(settings, database, keystore, clock)
    now = app.now()
    with app.transaction() as session:
        if session.get(Principal, LOCAL_ADMIN_ID) is None:
            session.add(
                Principal(
                    id=LOCAL_ADMIN_ID,
                    friendly_name="local admin",
                    principal_type="User",
                    is_admin=True,
                    created_at=now,
                )
            )
        root, issuing, template = create_hierarchy(
            session, Actor.local_admin(), keystore, app.urls, spec or HierarchySpec(), now=now
        )
    # The configuration is written last: a home without it is not a home, so a
    # failed init can simply be run again.
    settings.config_path.write_text(settings.to_toml())
    settings.config_path.chmod(0o600)
    return InitResult(app, root, issuing, template)
