"""Event times as integer microseconds on SQLite (relay/store/sqltypes.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Column, DateTime, MetaData, Table, insert, select

from relay.store.database import make_engine, upgrade
from relay.store.sqltypes import as_event_time, from_micros, to_micros
from relay.store.tables import Event

instants = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
                        timezones=st.just(UTC))


@given(instants)
def test_micros_round_trip_exactly(ts: datetime) -> None:
    assert from_micros(to_micros(ts)) == ts
    assert to_micros(ts.replace(tzinfo=None)) == to_micros(ts)  # naive is taken as UTC


@given(instants, instants)
def test_micros_order_like_the_times(a: datetime, b: datetime) -> None:
    assert (to_micros(a) < to_micros(b)) == (a < b)


def test_sqlite_stores_integers_and_queries_compare_times(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade(engine)
    t0 = datetime(2026, 11, 22, 9, 30, 0, 999_999, tzinfo=UTC)
    times = [t0 + timedelta(microseconds=i) for i in range(3)]
    with engine.begin() as conn:
        conn.execute(insert(Event), [dict(ts=t, node="n", client="192.0.2.1", host="192.0.2.1",
                                          stage="rcpt", action="reject", reason="r")
                                     for t in times])
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT ts, typeof(ts) FROM events ORDER BY id").all()
        later = conn.scalars(select(Event.ts).where(Event.ts > times[0])
                             .order_by(Event.ts)).all()
    assert stored == [(to_micros(t), "integer") for t in times]
    assert later == times[1:] and all(t.tzinfo is not None for t in later)
    engine.dispose()


def test_event_times_compare_with_other_tables_datetimes_in_sql(store_url: str) -> None:
    """blocklist.blocks compares events.ts with a block's last_seen in SQL: text against
    integer on SQLite unless converted (every event would look older than every block)."""
    engine = make_engine(store_url)
    upgrade(engine)
    marks = Table("marks", MetaData(), Column("at", DateTime(timezone=True)))
    t0 = datetime(2026, 11, 22, 9, 30, 0, 500_000, tzinfo=UTC)
    times = [t0 + timedelta(microseconds=i) for i in (-1, 0, 1, 2)]
    with engine.begin() as conn:
        marks.create(conn)
        conn.execute(insert(marks), [{"at": t0}])
        conn.execute(insert(Event), [dict(ts=t, node="n", client="192.0.2.1", host="192.0.2.1",
                                          stage="rcpt", action="reject", reason="r")
                                     for t in times])
    with engine.connect() as conn:
        later = conn.scalars(select(Event.ts).join(marks, Event.ts > as_event_time(marks.c.at))
                             .order_by(Event.ts)).all()
    assert later == times[2:]
    engine.dispose()
