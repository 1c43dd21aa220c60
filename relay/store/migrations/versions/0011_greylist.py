"""greylist and greylist_hosts: greylisting's triplets and its auto-allowlist

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-03 16:30:00

Both tables are shared by every relay on the store: a retry that reaches another relay
finds the triplet its first attempt left.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "greylist",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("network", sa.String(49), nullable=False),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("passed", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_greylist")),
    )
    op.create_index("ix_greylist_last_seen", "greylist", ["last_seen"])
    op.create_table(
        "greylist_hosts",
        sa.Column("network", sa.String(49), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("passes", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("network", name=op.f("pk_greylist_hosts")),
    )
    op.create_index("ix_greylist_hosts_expires", "greylist_hosts", ["expires"])


def downgrade() -> None:
    op.drop_index("ix_greylist_hosts_expires", "greylist_hosts")
    op.drop_table("greylist_hosts")
    op.drop_index("ix_greylist_last_seen", "greylist")
    op.drop_table("greylist")
