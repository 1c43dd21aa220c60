"""The SQL store: engine set-up for SQLite (WAL) and PostgreSQL, and schema migrations."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Engine, create_engine, event, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from relay.store.tables import Meta

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

log = logging.getLogger("floodgate.store")
T = TypeVar("T")


class StoreError(Exception):
    """The store cannot be reached or used; the message says which and why."""


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and its directory created."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            # A new store gets 16 KB pages instead of SQLite's 4 KB: an insert of events
            # touches fewer pages of their three indexes (scripts/bench scenario 7). Only a
            # database not yet written takes it; an existing store keeps its page size.
            cur.execute(f"PRAGMA page_size={PAGE_SIZE}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            # The event writer's commits: a checkpoint (pages copied into the database, and
            # an fsync) every 1,000 WAL pages, SQLite's default, came on nearly every batch
            # (a quarter of the time of a bare insert); every 40 MB of WAL it is one in
            # ten. The page cache: 64 MB at most (default 2 MB), grown only as used; the
            # events' host index does not fit in 2 MB. scripts/bench scenario 7.
            page = cur.execute("PRAGMA page_size").fetchone()[0]
            cur.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_BYTES // page}")
            cur.execute("PRAGMA cache_size=-65536")
            cur.close()

        return engine
    if parsed.drivername == "postgresql":
        # SQLAlchemy's default PostgreSQL driver is psycopg2; Floodgate ships psycopg (3)
        url = parsed.set(drivername="postgresql+psycopg")  # type: ignore[assignment]
    # A server that went away must fail fast: the relay logs it and carries on. Keepalives
    # and tcp_user_timeout end a connection whose server vanished mid-query (a crash, a
    # firewall dropping packets), which would otherwise wait forever. A `?key=value` in the
    # URL overrides each of these.
    args = {k: v for k, v in PG_CONNECT_ARGS.items() if k not in parsed.query}
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=10,
                         connect_args=args)


PAGE_SIZE = 16384  # bytes, for a new SQLite store
WAL_CHECKPOINT_BYTES = 40 * 2**20  # SQLite checkpoints when its WAL has grown this much

PG_CONNECT_ARGS: dict[str, object] = {
    "connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
    "keepalives_count": 3, "tcp_user_timeout": 30_000,
}


# Store calls get threads of their own, so a slow or unreachable database can never hold up
# the default executor that spool writes (the fsync before every 250) run on.
_STORE_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="store")


async def in_store_thread(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run a blocking store call off the event loop, on the store's own threads."""
    return await asyncio.get_running_loop().run_in_executor(
        _STORE_THREADS, functools.partial(fn, *args, **kwargs))


def _alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig  # lazy: a third of CLI start-up

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Bring the schema to the newest revision; returns (before, after)."""
    from alembic import command

    try:
        before = current_revision(engine)
        cfg = _alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        return before, current_revision(engine)
    except SQLAlchemyError as e:
        raise StoreError(f"cannot upgrade the database: {describe(e)}") from e


def describe(exc: BaseException) -> str:
    """One readable line for a database error, without SQLAlchemy's multi-line dump."""
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


def bump_generation(conn, key: str) -> None:  # type: ignore[no-untyped-def]
    """Increment a change counter inside the caller's transaction."""
    done = conn.execute(update(Meta).where(Meta.key == key).values(value=Meta.value + 1))
    if done.rowcount == 0:
        conn.execute(insert(Meta).values(key=key, value=1))


def read_generation(engine: Engine, key: str) -> int:
    with engine.connect() as conn:
        value = conn.execute(select(func.coalesce(func.max(Meta.value), 0)).where(
            Meta.key == key)).scalar_one()
    return int(value)
