"""CA generations: each certificate of a CA (renewals), its CRL cache, and what each hub link holds.

Every existing CA becomes generation 1 of itself (active, or retired with the CA), its
CRL cache moved onto the generation; every certificate was issued by generation 1.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "ca_generations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ca_id", sa.String(length=36), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("key_ref", sa.String(length=200), nullable=False),
        sa.Column("key_spec", sa.String(length=16), nullable=False),
        sa.Column("key_created_at", sa.DateTime(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("serial_hex", sa.String(length=64), nullable=False),
        sa.Column("sha1_hex", sa.String(length=40), nullable=False),
        sa.Column("certificate_der", sa.LargeBinary(), nullable=False),
        sa.Column("not_before", sa.DateTime(), nullable=False),
        sa.Column("not_after", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("activated_at", sa.DateTime(), nullable=True),
        sa.Column("retired_at", sa.DateTime(), nullable=True),
        sa.Column("crl_number", sa.Integer(), nullable=False),
        sa.Column("crl_der", sa.LargeBinary(), nullable=True),
        sa.Column("crl_next_update", sa.DateTime(), nullable=True),
        sa.Column("crl_stale", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["ca_id"], ["cas.id"], name=op.f("fk_ca_generations_ca_id_cas")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ca_generations")),
        sa.UniqueConstraint("ca_id", "number", name="uq_ca_generations_ca_id_number"),
    )
    op.create_index(op.f("ix_ca_generations_ca_id"), "ca_generations", ["ca_id"])
    op.create_index(op.f("ix_ca_generations_sha1_hex"), "ca_generations", ["sha1_hex"])
    op.execute(
        """
        INSERT INTO ca_generations (ca_id, number, state, key_ref, key_spec, key_created_at,
            subject, serial_hex, sha1_hex, certificate_der, not_before, not_after, created_at,
            activated_at, retired_at, crl_number, crl_der, crl_next_update, crl_stale)
        SELECT id, 1, CASE WHEN status = 'retired' THEN 'retired' ELSE 'active' END, key_ref,
            key_spec, created_at, subject, serial_hex, sha1_hex, certificate_der, not_before,
            not_after, created_at, created_at, NULL, crl_number, crl_der, crl_next_update,
            crl_stale
        FROM cas
        """
    )
    op.add_column("cas", sa.Column("generation", sa.Integer(), nullable=False, server_default="1"))
    op.add_column(
        "certificates",
        sa.Column("ca_generation", sa.Integer(), nullable=False, server_default="1"),
    )
    op.create_table(
        "hub_link_generations",
        sa.Column("link_name", sa.String(length=64), nullable=False),
        sa.Column("ca_id", sa.String(length=36), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("certificate_name", sa.String(length=64), nullable=True),
        sa.Column("thumbprint", sa.String(length=40), nullable=True),
        sa.Column("verified_at", sa.DateTime(), nullable=True),
        sa.Column("removed_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["link_name"],
            ["hub_links.name"],
            name=op.f("fk_hub_link_generations_link_name_hub_links"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["ca_id"], ["cas.id"], name=op.f("fk_hub_link_generations_ca_id_cas")
        ),
        sa.PrimaryKeyConstraint(
            "link_name", "ca_id", "generation", name=op.f("pk_hub_link_generations")
        ),
    )
    # What links already verified is generation 1 of each CA.
    op.execute(
        """
        INSERT INTO hub_link_generations (link_name, ca_id, generation, certificate_name,
            thumbprint, verified_at, removed_at, last_error, updated_at)
        SELECT link_name, ca_id, 1, certificate_name, thumbprint, verified_at, NULL,
            last_error, added_at
        FROM hub_link_cas WHERE certificate_name IS NOT NULL
        """
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("hub_link_generations")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("ca_generation")
    with op.batch_alter_table("cas") as batch:
        batch.drop_column("generation")
    op.drop_index(op.f("ix_ca_generations_sha1_hex"), table_name="ca_generations")
    op.drop_index(op.f("ix_ca_generations_ca_id"), table_name="ca_generations")
    op.drop_table("ca_generations")
