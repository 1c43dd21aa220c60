"""The SQLite store's settings: what make_engine gives a new store and an existing one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from relay.store.database import PAGE_SIZE, WAL_CHECKPOINT_BYTES, make_engine, upgrade


def _pragma(engine, name: str) -> object:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(text(f"PRAGMA {name}")).scalar()


def test_new_store_gets_large_pages_and_wal(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        upgrade(engine)
        assert _pragma(engine, "page_size") == PAGE_SIZE != 4096
        assert _pragma(engine, "journal_mode") == "wal"
        assert _pragma(engine, "wal_autocheckpoint") == WAL_CHECKPOINT_BYTES // PAGE_SIZE
    finally:
        engine.dispose()


def test_existing_store_keeps_its_page_size(tmp_path: Path) -> None:
    """A store made with SQLite's 4 KB pages stays as it is (changing it would mean a
    VACUUM of the whole database); its checkpoint interval is the same in bytes."""
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as old:
        old.execute("PRAGMA page_size=4096")
        old.execute("CREATE TABLE before_us (x INTEGER)")
    engine = make_engine(f"sqlite:///{db}")
    try:
        upgrade(engine)
        assert _pragma(engine, "page_size") == 4096
        assert _pragma(engine, "wal_autocheckpoint") == WAL_CHECKPOINT_BYTES // 4096
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM events")).scalar() == 0
    finally:
        engine.dispose()


def test_a_plain_postgresql_url_uses_psycopg(postgres) -> None:  # type: ignore[no-untyped-def]
    """`postgresql://` is what operators write; SQLAlchemy would pick psycopg2 for it,
    which is not installed (ModuleNotFoundError at the first connection)."""
    url = postgres.create_database().replace("postgresql+psycopg://", "postgresql://")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("select 1").scalar() == 1
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()
