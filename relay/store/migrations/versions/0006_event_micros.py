"""events.ts as integer microseconds on SQLite

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 09:30:00

SQLite only (relay/store/sqltypes.py says why): the 26-character text SQLAlchemy wrote becomes
microseconds since the epoch, UTC. The column keeps its DATETIME declaration; its indexes
are rewritten with the rows. PostgreSQL keeps timestamptz and is not touched.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# "YYYY-MM-DD HH:MM:SS.ffffff": whole seconds from strftime, the fraction padded to six digits
TO_MICROS = ("CAST(strftime('%s', substr(ts, 1, 19)) AS INTEGER) * 1000000 + "
             "CAST(substr(substr(ts, 21) || '000000', 1, 6) AS INTEGER)")
TO_TEXT = ("strftime('%Y-%m-%d %H:%M:%S', ts / 1000000, 'unixepoch') || '.' || "
           "substr('000000' || (ts % 1000000), -6)")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"UPDATE events SET ts = {TO_MICROS} WHERE typeof(ts) = 'text'")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"UPDATE events SET ts = {TO_TEXT} WHERE typeof(ts) = 'integer'")
