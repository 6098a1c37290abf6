"""Hub links: the hub's service API URL and the CA bundle its TLS is checked against.

A fleetpki hub linked from another process serves its service API on its HTTPS port,
which the hub resource's hostName does not name, under a private CA; an azure link
may now say both.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.add_column("hub_links", sa.Column("service_url", sa.Text(), nullable=True))
    op.add_column("hub_links", sa.Column("ca_bundle", sa.Text(), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("hub_links") as batch:
        batch.drop_column("ca_bundle")
        batch.drop_column("service_url")
