"""Column types of our own: event timestamps as integers on SQLite.

SQLAlchemy keeps a DateTime on SQLite as 26 characters of text. The events table has its
timestamp in three indexes, and every event goes into all of them: as an integer
(microseconds since the epoch, UTC) a bare insert of the same events ran 1.4x faster
(scripts/bench scenario 7). Integers order and compare like the times they stand for, so
queries that compare events.ts with a time keep working; SQL that compares it with
another table's DateTime column needs `as_event_time`. PostgreSQL keeps `timestamptz`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine, UserDefinedType

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def to_micros(ts: datetime) -> int:
    """Microseconds since the epoch, exactly (no float); naive datetimes are taken as UTC."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - EPOCH) // MICROSECOND


def from_micros(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


class _SQLiteMicros(UserDefinedType[int]):
    """What SQLite is given: the integer itself, in a column still declared DATETIME (its
    NUMERIC affinity keeps integers as integers; the declaration stays what it was)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "DATETIME"


class UTCTimestamp(TypeDecorator[datetime]):
    """A UTC datetime in Python; integer microseconds on SQLite, timestamptz elsewhere.
    Values read back are timezone-aware (UTC) on both."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLiteMicros())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None or dialect.name != "sqlite":
            return value
        return to_micros(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None or dialect.name != "sqlite":
            return value
        return from_micros(value)


class as_event_time(FunctionElement[datetime]):  # a SQL function, named like one
    """Another table's DateTime column as events.ts holds its times, for comparing the two
    in SQL (on SQLite the column is text and events.ts an integer: compared as they are,
    every integer sorts before every text)."""

    type = UTCTimestamp()
    name = "as_event_time"
    inherit_cache = True


@compiles(as_event_time)
def _as_event_time(element: as_event_time, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(as_event_time, "sqlite")
def _as_event_time_sqlite(element: as_event_time, compiler: SQLCompiler, **kw: Any) -> str:
    text = compiler.process(element.clauses, **kw)  # "YYYY-MM-DD HH:MM:SS.ffffff"
    return (f"(CAST(strftime('%s', substr({text}, 1, 19)) AS INTEGER) * 1000000 + "
            f"CAST(substr(substr({text}, 21) || '000000', 1, 6) AS INTEGER))")
