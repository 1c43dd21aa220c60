"""events.count: one row may stand for many events of one host, reason and minute

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 10:00:00

Under a flood the event writer folds events into one row per host, reason and minute
instead of dropping them (relay/events/writer.py); `count` says how many. Rows already stored
stand for one event each. A constant default: neither SQLite nor PostgreSQL (11 and
later) rewrites the table to add it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("count", sa.Integer(), nullable=False,
                                      server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("count")
