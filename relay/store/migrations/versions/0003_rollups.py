"""rollups: events per hour and host, events per minute

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 12:00:00

Creates the rollup tables and fills them from the events already stored, so reports over
an upgraded store count the old events too.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _counted() -> list[sa.Column]:
    return [
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
    ]


def _bucket(unit: str) -> str:
    """SQL for the start of the UTC hour/minute of events.ts, stored the way SQLAlchemy
    stores datetimes on each backend."""
    if op.get_bind().dialect.name == "postgresql":
        return f"date_trunc('{unit}', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    fmt = "%Y-%m-%d %H:00:00.000000" if unit == "hour" else "%Y-%m-%d %H:%M:00.000000"
    return f"strftime('{fmt}', ts)"


def upgrade() -> None:
    op.create_table(
        "host_rollups",
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(length=49), nullable=False),
        *_counted(),
        sa.PrimaryKeyConstraint("bucket", "host", "stage", "action", "reason",
                                name=op.f("pk_host_rollups")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "timeline_rollups",
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        *_counted(),
        sa.PrimaryKeyConstraint("bucket", "stage", "action", "reason",
                                name=op.f("pk_timeline_rollups")),
        sqlite_with_rowid=False,
    )
    hour, minute = _bucket("hour"), _bucket("minute")
    op.execute(
        "INSERT INTO host_rollups (bucket, host, stage, action, reason, total) "
        f"SELECT {hour}, host, stage, action, reason, count(*) FROM events "
        f"GROUP BY {hour}, host, stage, action, reason"
    )
    op.execute(
        "INSERT INTO timeline_rollups (bucket, stage, action, reason, total) "
        f"SELECT {minute}, stage, action, reason, count(*) FROM events "
        f"GROUP BY {minute}, stage, action, reason"
    )


def downgrade() -> None:
    op.drop_table("timeline_rollups")
    op.drop_table("host_rollups")
