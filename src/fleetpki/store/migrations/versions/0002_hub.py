"""The hub: device registry and twins, trusted CAs, telemetry, C2D queue, SAS policies.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "hub_c2d",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_c2d")),
    )
    with op.batch_alter_table("hub_c2d", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hub_c2d_device_id"), ["device_id"], unique=False)
        batch_op.create_index("ix_hub_c2d_device_id_status", ["device_id", "status"], unique=False)

    op.create_table(
        "hub_devices",
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.String(length=128), nullable=True),
        sa.Column("auth_type", sa.String(length=32), nullable=False),
        sa.Column("primary_thumbprint", sa.String(length=64), nullable=True),
        sa.Column("secondary_thumbprint", sa.String(length=64), nullable=True),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.Column("generation_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("status_updated_at", sa.DateTime(), nullable=False),
        sa.Column("connection_state", sa.String(length=16), nullable=False),
        sa.Column("connection_state_updated_at", sa.DateTime(), nullable=True),
        sa.Column("last_activity_at", sa.DateTime(), nullable=True),
        sa.Column("c2d_count", sa.Integer(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("desired", sa.JSON(), nullable=False),
        sa.Column("desired_version", sa.Integer(), nullable=False),
        sa.Column("reported", sa.JSON(), nullable=False),
        sa.Column("reported_version", sa.Integer(), nullable=False),
        sa.Column("twin_etag", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_hub_devices")),
    )
    op.create_table(
        "hub_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("module_id", sa.String(length=128), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("system_properties", sa.JSON(), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_messages")),
    )
    with op.batch_alter_table("hub_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hub_messages_device_id"), ["device_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_hub_messages_enqueued_at"), ["enqueued_at"], unique=False
        )

    op.create_table(
        "hub_sas_policies",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("rights", sa.String(length=200), nullable=False),
        sa.Column("primary_key", sa.Text(), nullable=False),
        sa.Column("secondary_key", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_hub_sas_policies")),
    )
    op.create_table(
        "hub_cas",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("certificate_der", sa.LargeBinary(), nullable=False),
        sa.Column("sha1_hex", sa.String(length=40), nullable=False),
        sa.Column("sha256_hex", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("not_after", sa.DateTime(), nullable=False),
        sa.Column("is_verified", sa.Boolean(), nullable=False),
        sa.Column("verification_code", sa.String(length=64), nullable=True),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("fleetpki_ca_id", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["fleetpki_ca_id"], ["cas.id"], name=op.f("fk_hub_cas_fleetpki_ca_id_cas")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_cas")),
        sa.UniqueConstraint("name", name=op.f("uq_hub_cas_name")),
    )
    with op.batch_alter_table("hub_cas", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hub_cas_sha1_hex"), ["sha1_hex"], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("hub_cas", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hub_cas_sha1_hex"))

    op.drop_table("hub_cas")
    op.drop_table("hub_sas_policies")
    with op.batch_alter_table("hub_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hub_messages_enqueued_at"))
        batch_op.drop_index(batch_op.f("ix_hub_messages_device_id"))

    op.drop_table("hub_messages")
    op.drop_table("hub_devices")
    with op.batch_alter_table("hub_c2d", schema=None) as batch_op:
        batch_op.drop_index("ix_hub_c2d_device_id_status")
        batch_op.drop_index(batch_op.f("ix_hub_c2d_device_id"))

    op.drop_table("hub_c2d")
