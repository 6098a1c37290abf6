"""Who recorded a device's connection state: hub node, connection and session order.

A disconnect is then recorded only from the connection recorded as connected, so that
a late one from a hub node the device has left does not mark it Disconnected
(``HubDeviceRepository.record_connection``).

Revision ID: 0019_connection_holder
Revises: 0018_outbox_prune
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_connection_holder"
down_revision = "0018_outbox_prune"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("hub_devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("connection_node", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("connection_session", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("connection_order", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("hub_devices", schema=None) as batch_op:
        batch_op.drop_column("connection_order")
        batch_op.drop_column("connection_session")
        batch_op.drop_column("connection_node")
