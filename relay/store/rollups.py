"""Rollups: event counts per time bucket, kept by the event writer so reports never scan
millions of raw events, and kept longer than the events themselves.

`host_rollups` counts per hour, host, stage, action and reason (the hosts report);
`timeline_rollups` counts per minute, stage, action and reason (timelines, summaries).
Both are upserted in the same transaction as the events they count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, Connection, DateTime, Engine, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from relay.store.base import Base
from relay.store.dbapi import executemany, markers
from relay.store.sqltypes import EPOCH, from_micros
from relay.store.tables import Event

HOUR = timedelta(hours=1)
DELIVERY = "delivery"  # the stage of delivery outcomes
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


class HostTotal(Base):
    """Refusals per hour and host, one row per host-hour (a third of `host_rollups`' rows
    in an outbreak): ranking the top hosts groups these, not every reason's row."""

    __tablename__ = "host_totals"
    bucket: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    host: Mapped[str] = mapped_column(String(49), primary_key=True)
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    tempfail: Mapped[int] = mapped_column(BigInteger, default=0)
    __table_args__ = ({"sqlite_with_rowid": False},)


def floor(ts: datetime, step: timedelta) -> datetime:
    """The start of the UTC bucket holding `ts` (naive datetimes are taken as UTC)."""
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return ts - (ts - EPOCH) % step


HOUR_US = 3_600_000_000
MINUTE_US = 60_000_000


def _bucket(start_us: int, sqlite: bool) -> object:
    """A bucket's key value: on SQLite the text SQLAlchemy's DateTime stores there."""
    start = from_micros(start_us)
    return start.isoformat(" ", "microseconds")[:26] if sqlite else start


def _upsert(conn: Connection, table, key: list[str], sums: list[str],  # type: ignore[no-untyped-def]
            counts: dict[tuple, tuple[int, ...]], unit: int) -> None:  # type: ignore[type-arg]
    """Add `counts` (keyed by bucket number, `unit` microseconds each, then the other key
    columns) to the `sums` columns of `table`, through the driver: SQLAlchemy's per-row
    parameter processing cost as much as the SQL."""
    if not counts:
        return
    sqlite = conn.dialect.name == "sqlite"
    name = table.name
    adds = ", ".join(f"{c} = {name}.{c} + excluded.{c}" for c in sums)
    sql = (f"INSERT INTO {name} ({', '.join(key + sums)}) "
           f"VALUES ({markers(conn.dialect, len(key) + len(sums))}) "
           f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {adds}")
    buckets = {n: _bucket(n * unit, sqlite) for n in {k[0] for k in counts}}
    # sorted: concurrent relays on PostgreSQL take row locks in the same order, no deadlock
    executemany(conn, sql, [(buckets[k[0]], *k[1:], *n) for k, n in sorted(counts.items())])


def add_to_rollups(conn: Connection, micros: Sequence[int], hosts: Sequence[str],
                   stages: Sequence[str], actions: Sequence[str],
                   reasons: Sequence[str], counts: Sequence[int] | None = None) -> None:
    """Count events, given column by column (`micros`: each one's time in microseconds
    since the epoch; `counts`: how many events each row stands for, 1 if None), into the
    rollups, inside the caller's transaction. Counted in C (Counter over zipped columns):
    a Python loop per event cost the writer a tenth; only folded rows (count > 1) get one."""
    hours = [u // HOUR_US for u in micros]
    minutes = [u // MINUTE_US for u in micros]
    by_host = Counter(zip(hours, hosts, stages, actions, reasons, strict=True))
    by_minute = Counter(zip(minutes, stages, actions, reasons, strict=True))
    if counts is not None and max(counts, default=1) > 1:
        for i, n in enumerate(counts):
            if n != 1:  # the row is counted once above: add the rest of what it stands for
                by_host[hours[i], hosts[i], stages[i], actions[i], reasons[i]] += n - 1
                by_minute[minutes[i], stages[i], actions[i], reasons[i]] += n - 1
    totals: dict[tuple[int, str], list[int]] = {}
    for (hour, host, stage, action, _), n in by_host.items():
        if stage == DELIVERY:  # the hosts report counts SMTP decisions, not deliveries
            continue
        total = totals.get((hour, host))
        if total is None:
            total = totals[(hour, host)] = [0, 0]
        if action == "reject":
            total[0] += n
        elif action == "tempfail":
            total[1] += n
    _upsert(conn, HostRollup.__table__, ["bucket", "host", "stage", "action", "reason"],
            ["total"], {k: (n,) for k, n in by_host.items()}, HOUR_US)
    _upsert(conn, TimelineRollup.__table__, ["bucket", "stage", "action", "reason"], ["total"],
            {k: (n,) for k, n in by_minute.items()}, MINUTE_US)
    _upsert(conn, HostTotal.__table__, ["bucket", "host"], ["rejected", "tempfail"],
            {k: tuple(v) for k, v in totals.items()}, HOUR_US)


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
            for model in (HostRollup, TimelineRollup, HostTotal):
                rollups += conn.execute(
                    delete(model).where(model.bucket < rollups_before)).rowcount or 0
    return events, rollups
