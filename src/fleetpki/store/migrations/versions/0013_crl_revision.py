"""CRLs built in the background (a revision counter per CA generation) and two indexes.

Each revocation adds one to its generation's ``crl_revision``; a CRL records the revision
it was built from in ``crl_built_revision``, so a revocation that commits while a CRL is
being built leaves the generation stale rather than lost. Two indexes for a million
certificates: one serves the CRL's query (the revoked certificates of one CA
generation), the other renewals and housekeeping (``renews_id``: a certificate's
successor, the renewed certificates), which scanned the table.

Revision ID: 0013_crl_revision
Revises: 0012_provisioning (0012_provisioning.py)
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_crl_revision"
down_revision = "0012_provisioning"
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
    with op.batch_alter_table("ca_generations") as batch:
        batch.drop_column("crl_built_revision")
        batch.drop_column("crl_revision")
