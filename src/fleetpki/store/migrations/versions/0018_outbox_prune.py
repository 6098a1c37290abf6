"""Indexes for pruning the outbox: events by age, deliveries by event.

The server's housekeeping deletes events older than ``outbox_retention_days`` whose
every delivery is done (``EventDelivery.prune_settled``); without these it would scan
both tables each minute.

Revision ID: 0018_outbox_prune
Revises: 0017_crl_shards
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0018_outbox_prune"
down_revision = "0017_crl_shards"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbox_created_at"), ["created_at"], unique=False)
    with op.batch_alter_table("event_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_event_deliveries_event_id"), ["event_id"], unique=False
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("event_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_event_deliveries_event_id"))
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_created_at"))
