"""CRLs built in the background (a revision counter, the DER in its own table), two indexes.

Each revocation adds one to its generation's ``crl_revision``; a CRL records the revision
it was built from in ``crl_built_revision``, so a revocation that commits while a CRL is
being built leaves the generation stale rather than lost. The DER moves to ``ca_crls``:
SQLite rewrites a whole row on update, and each revocation updates the generation's
row, which held the CRL (~45 MB at a million entries). Two indexes for a million
certificates: one serves the CRL's query (the revoked certificates of one CA
generation), the other renewals and housekeeping (``renews_id``: a certificate's
successor, the renewed certificates), which scanned the table.

Revision ID: 0015_crl_revision
Revises: 0014_c2d_feedback (0014_c2d_feedback.py)
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_crl_revision"
down_revision = "0014_c2d_feedback"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("ca_generations") as batch:
        batch.add_column(
            sa.Column("crl_revision", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("crl_built_revision", sa.Integer(), server_default="0", nullable=False)
        )
    op.create_table(
        "ca_crls",
        sa.Column("ca_id", sa.String(length=36), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("crl_number", sa.Integer(), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["ca_id"], ["cas.id"], name=op.f("fk_ca_crls_ca_id_cas")),
        sa.PrimaryKeyConstraint("ca_id", "generation", name=op.f("pk_ca_crls")),
    )
    # The cached CRLs move out of the generations' rows, which revocations update.
    op.execute(
        "INSERT INTO ca_crls (ca_id, generation, crl_number, der) "
        "SELECT ca_id, number, crl_number, crl_der FROM ca_generations "
        "WHERE crl_der IS NOT NULL"
    )
    op.execute("UPDATE ca_generations SET crl_der = NULL")
    op.create_index("ix_certificates_renews_id", "certificates", ["renews_id"])
    op.create_index(
        "ix_certificates_ca_id_status_generation",
        "certificates",
        ["ca_id", "status", "ca_generation"],
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index("ix_certificates_ca_id_status_generation", table_name="certificates")
    op.drop_index("ix_certificates_renews_id", table_name="certificates")
    # Older code rebuilds the CRLs it finds missing.
    op.execute("UPDATE ca_generations SET crl_stale = true")
    op.drop_table("ca_crls")
    with op.batch_alter_table("ca_generations") as batch:
        batch.drop_column("crl_built_revision")
        batch.drop_column("crl_revision")
