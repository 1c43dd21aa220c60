"""Rollups: event counts per time bucket, kept by the event writer so reports never scan
millions of raw events, and kept longer than the events themselves.

`host_rollups` counts per hour, host, stage, action and reason (the hosts report);
`timeline_rollups` counts per minute, stage, action and reason (timelines, summaries).
Both are upserted in the same transaction as the events they count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import BigInteger, Connection, DateTime, Engine, String, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, mapped_column

from relay.models import Base, Event

HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


class HostRollup(Base):
    """Events per hour and host: `report hosts` reads these, not the events."""

    __tablename__ = "host_rollups"
    bucket: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    host: Mapped[str] = mapped_column(String(49), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    action: Mapped[str] = mapped_column(String(16), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    # clustered on the key in SQLite: a time range is one contiguous read. No index on
    # host: SQLite would walk all of it to group by host instead of reading the range.
    __table_args__ = ({"sqlite_with_rowid": False},)


class TimelineRollup(Base):
    """Events per minute and outcome, all hosts together: timelines and summaries."""

    __tablename__ = "timeline_rollups"
    bucket: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    action: Mapped[str] = mapped_column(String(16), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    __table_args__ = ({"sqlite_with_rowid": False},)


class Countable(Protocol):
    ts: datetime
    host: str
    stage: str
    action: str
    reason: str


def floor(ts: datetime, step: timedelta) -> datetime:
    """The start of the UTC bucket holding `ts` (naive datetimes are taken as UTC)."""
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return ts - (ts - epoch) % step


def _upsert(conn: Connection, table, key: list[str], counts: Counter) -> None:  # type: ignore[no-untyped-def,type-arg]
    if not counts:
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(index_elements=key,
                                      set_={"total": table.c.total + stmt.excluded.total})
    # sorted: concurrent relays on PostgreSQL take row locks in the same order, no deadlock
    rows = [{**dict(zip(key, k, strict=True)), "total": n} for k, n in sorted(counts.items())]
    conn.execute(stmt, rows)


def add_to_rollups(conn: Connection, rows: Iterable[Countable]) -> None:
    """Count `rows` into both rollups, inside the caller's transaction."""
    hosts: Counter[tuple[object, ...]] = Counter()
    minutes: Counter[tuple[object, ...]] = Counter()
    for r in rows:
        hosts[(floor(r.ts, HOUR), r.host, r.stage, r.action, r.reason)] += 1
        minutes[(floor(r.ts, MINUTE), r.stage, r.action, r.reason)] += 1
    _upsert(conn, HostRollup.__table__, ["bucket", "host", "stage", "action", "reason"], hosts)
    _upsert(conn, TimelineRollup.__table__, ["bucket", "stage", "action", "reason"], minutes)


def prune(engine: Engine, *, events_before: datetime | None,
          rollups_before: datetime | None, chunk: int = 20_000) -> tuple[int, int]:
    """Delete old events in chunks (short transactions: the writer keeps writing), then
    old rollups. Returns (events, rollup rows) deleted."""
    events = rollups = 0
    if events_before is not None:
        while True:
            ids = select(Event.id).where(Event.ts < events_before).order_by(Event.id).limit(chunk)
            with engine.begin() as conn:
                n = conn.execute(delete(Event).where(Event.id.in_(ids.scalar_subquery())))
            events += n.rowcount or 0
            if (n.rowcount or 0) < chunk:
                break
    if rollups_before is not None:
        with engine.begin() as conn:
            for model in (HostRollup, TimelineRollup):
                rollups += conn.execute(
                    delete(model).where(model.bucket < rollups_before)).rowcount or 0
    return events, rollups
