"""Migration 0017: revocations stamped with their CRL revision; a CRL stale at the upgrade
is rebuilt from every revoked certificate, since the revocations before it carry no stamp."""

from __future__ import annotations

from alembic import command
from cryptography import x509
from sqlalchemy import inspect, text

from conftest import ALICE, make_csr
from fleetpki.application import FleetPKI
from fleetpki.pki.revocation import RevocationReason
from fleetpki.services import Actor
from fleetpki.services.certificates import IssueCommand
from fleetpki.store import Database


def _issue(fleet: FleetPKI, ca_id: str, name: str) -> str:
    actor = Actor(ALICE)
    fleet.domains.register(
        actor, ca_id=ca_id, template_id=None, name=name, owners=[ALICE], requesters=[ALICE]
    )
    return fleet.certificates.issue(
        actor, IssueCommand(ca_id=ca_id, csr=make_csr(name)[1])
    ).certificate.serial_hex


def _revoke(fleet: FleetPKI, serial: str) -> None:
    fleet.certificates.revoke(Actor(ALICE), serial, RevocationReason.KEY_COMPROMISE)


def _migrate(database_url: str, revision: str, *, down: bool = False) -> None:
    database = Database(database_url)
    try:
        config = database._alembic_config()
        with database.engine.begin() as connection:
            config.attributes["connection"] = connection
            (command.downgrade if down else command.upgrade)(config, revision)
    finally:
        database.dispose()


def test_a_crl_stale_at_the_upgrade_is_rebuilt_from_every_revocation(
    fleet: FleetPKI, database_url: str
) -> None:
    issuing = next(c for c in fleet.cas.list() if c.tier == "issuing")
    listed, unstamped, later = (_issue(fleet, issuing.id, f"dev-{i}") for i in range(3))
    _revoke(fleet, listed)
    fleet.crls.refresh(issuing.id)
    _migrate(database_url, "0016_hub_nodes", down=True)
    database = Database(database_url)
    try:
        with database.engine.begin() as connection:
            columns = {c["name"] for c in inspect(connection).get_columns("certificates")}
            assert "revoked_revision" not in columns
            # A revocation as the code before 0017 made it: counted, with no stamp.
            connection.execute(
                text(
                    "UPDATE certificates SET status = 'revoked', revoked_at = created_at, "
                    "revocation_reason = 1 WHERE serial_hex = :serial"
                ),
                {"serial": unstamped},
            )
            connection.execute(
                text(
                    "UPDATE ca_generations SET crl_revision = crl_revision + 1, "
                    "crl_stale = :stale WHERE ca_id = :ca"
                ),
                {"stale": True, "ca": issuing.id},
            )
    finally:
        database.dispose()
    _migrate(database_url, "head")
    with fleet.store.reading() as tx:
        row = tx.cas.get(issuing.id)
        assert row is not None
        assert row.generations[0].crl_built_revision == -1
        assert row.generations[0].crl_stale
    _revoke(fleet, later)
    crl = x509.load_der_x509_crl(fleet.crls.refresh(issuing.id).der)
    for serial in (listed, unstamped, later):
        assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
