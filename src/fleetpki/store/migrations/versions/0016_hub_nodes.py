"""Hub nodes and relayed direct methods: several hub processes on one database.

``hub_nodes`` holds each running hub node's heartbeat (and its connected devices);
``hub_method_calls`` carries a direct method from a process without the device's
session to the node that holds it, and the answer back.

Revision ID: 0016_hub_nodes
Revises: 0015_crl_revision
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_hub_nodes"
down_revision = "0015_crl_revision"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "hub_nodes",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("instance", sa.String(length=36), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("connected", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_hub_nodes")),
    )
    with op.batch_alter_table("hub_nodes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_hub_nodes_heartbeat_at"), ["heartbeat_at"], unique=False
        )
    op.create_table(
        "hub_method_calls",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("method_name", sa.String(length=128), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("deadline", sa.DateTime(), nullable=False),
        sa.Column("asked", sa.JSON(), nullable=False),
        sa.Column("declined_by", sa.JSON(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result_status", sa.Integer(), nullable=True),
        sa.Column("result_payload", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_method_calls")),
    )
    with op.batch_alter_table("hub_method_calls", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_hub_method_calls_deadline"), ["deadline"], unique=False
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("hub_method_calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hub_method_calls_deadline"))
    op.drop_table("hub_method_calls")
    with op.batch_alter_table("hub_nodes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hub_nodes_heartbeat_at"))
    op.drop_table("hub_nodes")
