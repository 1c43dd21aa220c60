"""The whole schema: every table module imported once, so Alembic and `create_all` see all of it.

The table modules import only `relay.store.base`; nothing imports this module but the
migrations and the schema tests, so no table module needs a tail import to complete another.
"""

from __future__ import annotations

from relay.store import greylist_tables, rollups, sender_tables, tables, web_tables
from relay.store.base import Base

metadata = Base.metadata
MODULES = (tables, rollups, web_tables, greylist_tables, sender_tables)
