"""What the firewall should hold right now: active blocks and every network never to block."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from blocklist.export import Entry, Settings, utc
from blocklist.protection import Protection
from blocklist.scoring import OBSERVE_SOURCE
from relay.config import Config
from relay.store.tables import Allow, Block


def load(engine: Engine, now: datetime) -> tuple[list[Entry], list[str]]:
    """Active blocks (expires after `now`) and the store's allowlist, in one snapshot."""
    now = utc(now)
    with engine.connect() as conn, conn.begin():
        if engine.dialect.name == "sqlite":
            entries = _load_sqlite(conn.connection.driver_connection, now)
        else:
            rows = conn.execute(select(Block.network, Block.reason, Block.score,
                                       Block.expires).where(Block.expires > now,
                                                            Block.source != OBSERVE_SOURCE)).all()
            entries = [Entry(n, r or "", float(s or 0.0), utc(e)) for n, r, s, e in rows]
        allow = list(conn.execute(select(Allow.network)).scalars())
    return [e for e in entries if e.expires > now], allow


def _load_sqlite(db: Any, now: datetime) -> list[Entry]:
    """100,000 blocks: SQLAlchemy's per-row result processing cost more than the render, so
    this reads through the driver, with dates parsed in C.

    SQLite's planner takes the expiry index for `expires > ?` whatever the share of rows it
    matches, and 100,000 index probes cost four times a table scan. So: the index when
    most rows are history (expired), a scan (`+expires` hides the index) when most are live.
    Both counts come from the index alone, in milliseconds.
    """
    table, at = Block.__tablename__, now.strftime("%Y-%m-%d %H:%M:%S.%f")
    live = db.execute(f"SELECT count(*) FROM {table} WHERE expires > ?", (at,)).fetchone()[0]
    total = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    column = "+expires" if live * 3 >= total else "expires"
    rows = db.execute(f"SELECT network, coalesce(reason, ''), coalesce(score, 0.0), "
                      f"expires || '+00:00' FROM {table} WHERE {column} > ? AND source != ?",
                      (at, OBSERVE_SOURCE))
    new, parse = tuple.__new__, datetime.fromisoformat  # no per-row Python frame
    return [new(Entry, (n, r, float(s), parse(e))) for n, r, s, e in rows]


def fingerprint(entries: Iterable[Entry], protect: Iterable[str]) -> str:
    """Changes when a block, its expiry or the protected set changes, not with the clock."""
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.network):
        h.update(f"{e.network}\0{e.expires.isoformat()}\0{e.reason}\0{e.score}\n".encode())
    h.update(b"\1")
    for p in sorted(protect):
        h.update(p.encode() + b"\n")
    return h.hexdigest()


def settings(config: Config, now: datetime) -> Settings:
    fw = config.firewall
    return Settings(now=now, table=fw.table, set4=fw.set_v4, set6=fw.set_v6,
                    priority=fw.priority, ipset4=fw.ipset_v4, ipset6=fw.ipset_v6,
                    ipset_maxelem=fw.ipset_maxelem, chain=fw.chain, hook=fw.hook,
                    ports=tuple(fw.ports), max_timeout=int(fw.max_timeout))


def snapshot(config: Config, engine: Engine, now: datetime) -> tuple[list[Entry], list[str]]:
    """Active blocks, and every network never to block (blocklist.protection). None while a
    hosted domain observes ([policy]): a firewall cannot tell one domain's mail from
    another's, and the gate lets such hosts in to RCPT."""
    entries, allow = load(engine, now)
    if config.observed():
        entries = []
    return entries, Protection.of_config(config).with_allow(allow).networks()
