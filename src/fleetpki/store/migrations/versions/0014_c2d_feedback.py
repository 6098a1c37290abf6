"""Cloud-to-device feedback: a message whose outcome is owed to the feedback receiver.

A message sent with ``iothub-ack`` ``full`` or ``positive`` owes a "Success" record
once the device acknowledges it (and ``full`` or ``negative`` an "Expired" one when it
expires); the AMQP feedback node (``/messages/servicebound/feedback``) hands them out
and clears the flag when the receiver accepts them.

Revision ID: 0014_c2d_feedback
Revises: 0013_portal
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_c2d_feedback"
down_revision = "0013_portal"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.add_column(
        "hub_c2d",
        sa.Column("feedback_due", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("hub_c2d") as batch:
        batch.drop_column("feedback_due")
