"""Provisioning (Azure DPS): enrollments, registration states and registration operations.

Revision ID: 0012_provisioning
Revises: 0011_sas_devices (0011_sas_devices.py)
Create Date: 2026-12-12
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_provisioning"
down_revision = "0011_sas_devices"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "provisioning_enrollments",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("ca_name", sa.String(length=200), nullable=True),
        sa.Column("fleetpki_ca_id", sa.String(length=36), nullable=True),
        sa.Column("certificate_der", sa.LargeBinary(), nullable=True),
        sa.Column("certificate_sha1", sa.String(length=40), nullable=True),
        sa.Column("certificate_sha256", sa.String(length=64), nullable=True),
        sa.Column("allocation_policy", sa.String(length=16), nullable=False),
        sa.Column("hubs", sa.JSON(), nullable=False),
        sa.Column("initial_twin", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("update_hub_assignment", sa.Boolean(), nullable=False),
        sa.Column("migrate_device_data", sa.Boolean(), nullable=False),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provisioning_enrollments")),
        sa.UniqueConstraint("kind", "name", name="uq_provisioning_enrollments_name"),
    )
    op.create_table(
        "provisioning_registrations",
        sa.Column("registration_id", sa.String(length=128), nullable=False),
        sa.Column("enrollment_kind", sa.String(length=16), nullable=False),
        sa.Column("enrollment_name", sa.String(length=128), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=True),
        sa.Column("assigned_hub", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("substatus", sa.String(length=40), nullable=True),
        sa.Column("certificate_sha1", sa.String(length=40), nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("registration_id", name=op.f("pk_provisioning_registrations")),
    )
    op.create_table(
        "provisioning_operations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("registration_id", sa.String(length=128), nullable=False),
        sa.Column("certificate_sha1", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provisioning_operations")),
    )
    with op.batch_alter_table("provisioning_operations") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_provisioning_operations_registration_id"),
            ["registration_id"],
            unique=False,
        )


def downgrade() -> None:
    """Revert this revision (enrollments and registration records are lost)."""
    with op.batch_alter_table("provisioning_operations") as batch_op:
        batch_op.drop_index(batch_op.f("ix_provisioning_operations_registration_id"))
    op.drop_table("provisioning_operations")
    op.drop_table("provisioning_registrations")
    op.drop_table("provisioning_enrollments")
