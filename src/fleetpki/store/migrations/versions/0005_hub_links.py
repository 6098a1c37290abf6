"""Hub links: the hubs this CA drives through connectors, and the CAs each one trusts.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "hub_links",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("consumer", sa.String(length=128), nullable=False),
        sa.Column("disable_on_revoke", sa.Boolean(), nullable=False),
        sa.Column("register_devices", sa.Boolean(), nullable=False),
        sa.Column("subscription_id", sa.String(length=36), nullable=True),
        sa.Column("resource_group", sa.String(length=90), nullable=True),
        sa.Column("hub_name", sa.String(length=50), nullable=True),
        sa.Column("management_url", sa.Text(), nullable=True),
        sa.Column("credential", sa.String(length=32), nullable=True),
        sa.Column("tenant_id", sa.String(length=128), nullable=True),
        sa.Column("client_id", sa.String(length=64), nullable=True),
        sa.Column("authority_host", sa.Text(), nullable=True),
        sa.Column("certificate_path", sa.Text(), nullable=True),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_hub_links")),
        sa.UniqueConstraint("consumer", name=op.f("uq_hub_links_consumer")),
    )
    op.create_table(
        "hub_link_cas",
        sa.Column("link_name", sa.String(length=64), nullable=False),
        sa.Column("ca_id", sa.String(length=36), nullable=False),
        sa.Column("added_at", sa.DateTime(), nullable=False),
        sa.Column("certificate_name", sa.String(length=64), nullable=True),
        sa.Column("thumbprint", sa.String(length=40), nullable=True),
        sa.Column("verified_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["ca_id"], ["cas.id"], name=op.f("fk_hub_link_cas_ca_id_cas")),
        sa.ForeignKeyConstraint(
            ["link_name"],
            ["hub_links.name"],
            name=op.f("fk_hub_link_cas_link_name_hub_links"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("link_name", "ca_id", name=op.f("pk_hub_link_cas")),
    )


def downgrade() -> None:
    """Revert this revision (the links and their trust records are lost)."""
    op.drop_table("hub_link_cas")
    op.drop_table("hub_links")
