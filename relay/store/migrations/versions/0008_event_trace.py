"""events.session and events.message_id: find a session by its reply's `[ref ...]`

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 10:00:00

Every refusal and every queued reply carries the session's id (`[ref 3f9a1c2b7e10]`);
`floodgate trace` finds the session's events by it, and a message by its queue id or its
Message-ID. The queue id and Message-ID indexes are partial: only accepted and delivered
messages carry them, so writing a refused flood's events costs one index more, not three.
Constant defaults: neither SQLite nor PostgreSQL rewrites the table to add them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("session", sa.String(16), nullable=False,
                                      server_default=""))
    op.add_column("events", sa.Column("message_id", sa.String(255), nullable=False,
                                      server_default=""))
    op.create_index("ix_events_session", "events", ["session"])
    for column in ("queue_id", "message_id"):
        where = sa.text(f"{column} != ''")
        op.create_index(f"ix_events_{column}", "events", [column], sqlite_where=where,
                        postgresql_where=where)


def downgrade() -> None:
    for name in ("ix_events_message_id", "ix_events_queue_id", "ix_events_session"):
        op.drop_index(name, "events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("message_id")
        batch.drop_column("session")
