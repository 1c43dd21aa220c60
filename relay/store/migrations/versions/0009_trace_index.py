"""the indexes `floodgate trace` needs on a store of millions of events

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 17:00:00

(filled in below)
"""

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
