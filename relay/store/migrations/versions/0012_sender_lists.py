"""sender_lists: envelope senders, sender domains and HELO names allowed or refused

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 17:00:00

Managed by `floodgate sender block|allow` and the web API; every relay on the store loads
the lists again when the `sender_lists_generation` counter moves.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sender_lists",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("list", sa.String(8), nullable=False),
        sa.Column("field", sa.String(8), nullable=False),
        sa.Column("pattern", sa.String(320), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sender_lists")),
        sa.UniqueConstraint("list", "field", "pattern",
                            name=op.f("uq_sender_lists_list_field_pattern")),
    )


def downgrade() -> None:
    op.drop_table("sender_lists")
