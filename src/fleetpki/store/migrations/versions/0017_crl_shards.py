"""The next CRL from the previous one (revocations stamped with their CRL revision);
renewals' index partial.

``certificates.revoked_revision`` is the generation's ``crl_revision`` that the
certificate's revocation counted as, and a partial index over the revoked rows finds
the revocations since a CRL was built (its ``crl_built_revision``): the next CRL is the
previous one's entries with those added, not a read and an encoding of every revoked
certificate (a million take tens of seconds). Revocations made before this revision
carry none; a generation whose CRL misses some of them is marked for a full rebuild
(``crl_built_revision`` -1), which reads every revoked row. ``ix_certificates_renews_id``
becomes partial (renewals only), see the upgrade; on PostgreSQL the CRLs' DER is stored
uncompressed.

Revision ID: 0017_crl_shards
Revises: 0016_hub_nodes
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_crl_shards"
down_revision = "0016_hub_nodes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("revoked_revision", sa.Integer(), nullable=True))
    op.create_index(
        "ix_certificates_revoked_revision",
        "certificates",
        ["ca_id", "ca_generation", "revoked_revision"],
        sqlite_where=sa.text("revoked_revision IS NOT NULL"),
        postgresql_where=sa.text("revoked_revision IS NOT NULL"),
    )
    # Partial, over renewals only: issuance stops writing it, and SQLite's planner stops
    # scanning the table for housekeeping's "renews_id IS NOT NULL" (1-3 s at a million).
    op.drop_index("ix_certificates_renews_id", table_name="certificates")
    op.create_index(
        "ix_certificates_renews_id",
        "certificates",
        ["renews_id"],
        sqlite_where=sa.text("renews_id IS NOT NULL"),
        postgresql_where=sa.text("renews_id IS NOT NULL"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # A CRL's DER is stored out of line uncompressed: its entries' serials are random,
        # and compressing 45 MB (a million entries) held up the store for seconds.
        op.execute("ALTER TABLE ca_crls ALTER COLUMN der SET STORAGE EXTERNAL")
    # A stale CRL does not list every revocation counted so far, and those have no
    # stamp: the next CRL of such a generation reads them all.
    op.execute(
        "UPDATE ca_generations SET crl_built_revision = -1, crl_stale = true "
        "WHERE crl_built_revision < crl_revision"
    )


def downgrade() -> None:
    """Revert this revision."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE ca_crls ALTER COLUMN der SET STORAGE EXTENDED")
    op.drop_index("ix_certificates_revoked_revision", table_name="certificates")
    op.drop_index("ix_certificates_renews_id", table_name="certificates")
    op.create_index("ix_certificates_renews_id", "certificates", ["renews_id"])
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("revoked_revision")
    op.execute("UPDATE ca_generations SET crl_built_revision = 0 WHERE crl_built_revision < 0")
