"""Hub link pins: devices a link moved to thumbprint authentication after a revocation.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "hub_link_pins",
        sa.Column("link_name", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("thumbprint", sa.String(length=40), nullable=False),
        sa.Column("revoked_serial", sa.String(length=64), nullable=False),
        sa.Column("until", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("link_name", "device_id", name=op.f("pk_hub_link_pins")),
    )
    with op.batch_alter_table("hub_link_pins", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hub_link_pins_until"), ["until"], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("hub_link_pins", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hub_link_pins_until"))
    op.drop_table("hub_link_pins")
