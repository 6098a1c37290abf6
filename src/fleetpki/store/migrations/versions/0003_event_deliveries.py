"""Events with a delivery per consumer: event_consumers and event_deliveries.

The outbox kept one status per event, so the first consumer to deliver an event took
it from every other. Delivery state now lives in ``event_deliveries``, one row per
event and consumer. Events still pending at upgrade time belonged to the built-in
hub's consumer, whose sessions do not outlive the process, and are not carried over.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "event_consumers",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("event_types", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_event_consumers")),
    )
    op.create_table(
        "event_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("consumer", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["consumer"],
            ["event_consumers.name"],
            name=op.f("fk_event_deliveries_consumer_event_consumers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["outbox.id"],
            name=op.f("fk_event_deliveries_event_id_outbox"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_deliveries")),
        sa.UniqueConstraint("event_id", "consumer", name="uq_event_deliveries_event_id_consumer"),
    )
    with op.batch_alter_table("event_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_event_deliveries_due", ["consumer", "status", "next_attempt_at"], unique=False
        )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_status_next_attempt_at")
        batch_op.drop_column("status")
        batch_op.drop_column("attempts")
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("delivered_at")
        batch_op.drop_column("last_error")


def downgrade() -> None:
    """Revert this revision (pending deliveries are lost)."""
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("delivered_at", sa.DateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("next_attempt_at", sa.DateTime(), nullable=False, server_default="1970-01-01")
        )
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("status", sa.String(length=16), nullable=False, server_default="done")
        )
        batch_op.create_index(
            "ix_outbox_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )
    with op.batch_alter_table("event_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_event_deliveries_due")
    op.drop_table("event_deliveries")
    op.drop_table("event_consumers")
