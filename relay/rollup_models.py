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
from sqlalchemy.orm import Mapped, mapped_column

from relay.models import Base, Event

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


def stamp(ts: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS.ffffff` in UTC: the text SQLAlchemy's DateTime stores in SQLite,
    and whose first 13 / 16 characters name the hour / minute bucket. isoformat is C code;
    strftime and timedelta arithmetic per event cost the writer a third of its time."""
    if ts.tzinfo is not UTC:
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return ts.isoformat(" ", "microseconds")[:26]


_BUCKET_TAIL = {13: ":00:00.000000", 16: ":00.000000"}


def _upsert(conn: Connection, table, key: list[str], sums: list[str],  # type: ignore[no-untyped-def]
            counts: dict[tuple[str, ...], tuple[int, ...]]) -> None:
    """Add `counts` (keyed by bucket prefix, then the other key columns) to the `sums`
    columns of `table`, through the driver: SQLAlchemy's per-row parameter processing cost
    as much as the SQL."""
    if not counts:
        return
    sqlite = conn.dialect.name == "sqlite"
    mark = "?" if sqlite else "%s"
    name = table.name
    adds = ", ".join(f"{c} = {name}.{c} + excluded.{c}" for c in sums)
    sql = (f"INSERT INTO {name} ({', '.join(key + sums)}) "
           f"VALUES ({', '.join([mark] * (len(key) + len(sums)))}) "
           f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {adds}")
    buckets: dict[str, object] = {}
    for prefix, *_ in counts:
        if prefix not in buckets:
            text = prefix + _BUCKET_TAIL[len(prefix)]
            buckets[prefix] = text if sqlite else datetime.fromisoformat(text + "+00:00")
    # sorted: concurrent relays on PostgreSQL take row locks in the same order, no deadlock
    conn.exec_driver_sql(sql, [(buckets[k[0]], *k[1:], *n) for k, n in sorted(counts.items())])


def add_to_rollups(conn: Connection, rows: Iterable[Countable],
                   stamps: Iterable[str] | None = None) -> None:
    """Count `rows` into the rollups, inside the caller's transaction. `stamps`: each
    row's `stamp(ts)`, when the caller has them already."""
    rows = list(rows)
    texts = list(stamps) if stamps is not None else [stamp(r.ts) for r in rows]
    hosts: Counter[tuple[str, ...]] = Counter()
    minutes: Counter[tuple[str, ...]] = Counter()
    totals: dict[tuple[str, ...], list[int]] = {}
    for r, t in zip(rows, texts, strict=True):
        hosts[(t[:13], r.host, r.stage, r.action, r.reason)] += 1
        minutes[(t[:16], r.stage, r.action, r.reason)] += 1
        if r.stage != DELIVERY:  # the hosts report counts SMTP decisions, not deliveries
            total = totals.get((t[:13], r.host))
            if total is None:
                total = totals[(t[:13], r.host)] = [0, 0]
            if r.action == "reject":
                total[0] += 1
            elif r.action == "tempfail":
                total[1] += 1
    _upsert(conn, HostRollup.__table__, ["bucket", "host", "stage", "action", "reason"],
            ["total"], {k: (n,) for k, n in hosts.items()})
    _upsert(conn, TimelineRollup.__table__, ["bucket", "stage", "action", "reason"], ["total"],
            {k: (n,) for k, n in minutes.items()})
    _upsert(conn, HostTotal.__table__, ["bucket", "host"], ["rejected", "tempfail"],
            {k: tuple(v) for k, v in totals.items()})


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
