"""greylist: an index on (network, first_seen), for the cap on a network's pending triplets

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 17:30:00

Before a new triplet is stored, greylisting counts the network's triplets still waiting for
their retry (first seen within the retry window, not passed): a short range of this index,
at most `max_pending` rows.
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_greylist_network_first_seen", "greylist", ["network", "first_seen"])


def downgrade() -> None:
    op.drop_index("ix_greylist_network_first_seen", "greylist")
