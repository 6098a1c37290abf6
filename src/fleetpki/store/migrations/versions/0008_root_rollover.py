"""Root rollover: which parent generation signed a CA generation, and the link certificates.

A root renewed with a new key gets two cross-certificates (RFC 4210 §4.4: the new key
certified by the old, the old by the new), kept on the new root generation; an issuing
CA re-certified under the new root records the parent generation that signed it, so
its chain is built through the right root.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.add_column("ca_generations", sa.Column("parent_generation", sa.Integer(), nullable=True))
    op.add_column("ca_generations", sa.Column("cross_der", sa.LargeBinary(), nullable=True))
    op.add_column("ca_generations", sa.Column("back_cross_der", sa.LargeBinary(), nullable=True))
    # Until now every CA generation was signed by its parent's generation of the moment;
    # parents were only ever renewed with their own key, so the parent's current
    # generation is an issuer of every existing one.
    op.execute(
        "UPDATE ca_generations SET parent_generation = ("
        " SELECT p.generation FROM cas c JOIN cas p ON p.id = c.parent_id"
        " WHERE c.id = ca_generations.ca_id)"
    )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("ca_generations") as batch:
        batch.drop_column("back_cross_der")
        batch.drop_column("cross_der")
        batch.drop_column("parent_generation")
