"""events.folded: the sessions a row folded in a flood stands for

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 17:00:00

A flood folds events into one row per host, reason and minute (relay/events/writer.py);
the row kept only its first session, so `floodgate trace REF` of any other session it
stood for found nothing. The row now names up to 16 of them. The index is partial: only
folded rows carry the column, a few a minute in a flood, so writing costs nothing more and
`trace REF` reads all of them (within its window) without touching the rest.
Constant default: neither SQLite nor PostgreSQL rewrites the table to add it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("folded", sa.Text(), nullable=False, server_default=""))
    where = sa.text("folded != ''")
    op.create_index("ix_events_folded_ts", "events", ["ts"], sqlite_where=where,
                    postgresql_where=where)


def downgrade() -> None:
    op.drop_index("ix_events_folded_ts", "events")
    # not batch_alter_table: on SQLite it copies the table and loses the expression indexes
    # of 0009 (SQLAlchemy cannot reflect them); SQLite drops a column itself since 3.35
    op.drop_column("events", "folded")
