"""the indexes `floodgate trace --from/--to` needs on a store of millions of events

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 17:00:00

trace compares addresses case-blind (`lower(sender) = ?`): without an index on that
expression a search by sender or recipient reads every event of its window (seconds on
10 million events; scripts/bench scenario 10). Partial, on events that carry an address:
connects and refusals before MAIL write nothing to them. A search by client uses the
(host, ts) index through the client's host key, by reference and by Message-ID the
indexes of 0008 (relay/events/trace.py names their partial conditions).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for column in ("sender", "recipient"):
        where = sa.text(f"{column} != ''")
        op.create_index(f"ix_events_{column}_lower", "events", [sa.text(f"lower({column})")],
                        sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for column in ("sender", "recipient"):
        op.drop_index(f"ix_events_{column}_lower", "events")
