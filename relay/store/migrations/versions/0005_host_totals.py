"""host_totals: refusals per hour and host, for ranking the top hosts

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 04:10:00

Filled from host_rollups, so the hosts report over an upgraded store ranks the old
events too.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "host_totals",
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(length=49), nullable=False),
        sa.Column("rejected", sa.BigInteger(), nullable=False),
        sa.Column("tempfail", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "host", name=op.f("pk_host_totals")),
        sqlite_with_rowid=False,
    )
    op.execute(
        "INSERT INTO host_totals (bucket, host, rejected, tempfail) "
        "SELECT bucket, host, "
        "sum(CASE WHEN action = 'reject' THEN total ELSE 0 END), "
        "sum(CASE WHEN action = 'tempfail' THEN total ELSE 0 END) "
        "FROM host_rollups WHERE stage != 'delivery' GROUP BY bucket, host"
    )


def downgrade() -> None:
    op.drop_table("host_totals")
