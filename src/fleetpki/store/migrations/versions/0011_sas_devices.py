"""Symmetric-key (sas) devices: each device's primary and secondary key, sealed.

The keys are needed in the clear to check a device's SAS token (an HMAC), so they are
kept sealed with Fernet under a key derived from the home's passphrase, like the
service policies' keys, not hashed.

Revision ID: 0011_sas_devices
Revises: 0008
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_sas_devices"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.add_column("hub_devices", sa.Column("primary_key", sa.Text(), nullable=True))
    op.add_column("hub_devices", sa.Column("secondary_key", sa.Text(), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("hub_devices") as batch:
        batch.drop_column("secondary_key")
        batch.drop_column("primary_key")
