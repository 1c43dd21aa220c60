"""One event as the relay records it, the row it becomes, and the one way rows are written
(the writer process and tests share it, so the SQL lives in one place)."""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Dialect

from relay.logs import printable
from relay.store.dbapi import executemany, markers
from relay.store.rollups import add_to_rollups
from relay.store.sqltypes import from_micros, to_micros
from relay.store.tables import Event


@dataclass(slots=True)
class EventRecord:
    ts: datetime
    node: str
    client: str
    host: str
    stage: str
    action: str
    reason: str
    count: int = 1  # events this record stands for (relay/store/tables.py Event.count)
    code: int = 0
    helo: str = ""
    sender: str = ""
    recipient: str = ""
    detail: str = ""
    size: int | None = None
    queue_id: str = ""
    # the SMTP session: the `[ref ...]` its replies carry (relay/smtp/replies.py with_ref)
    session: str = ""
    message_id: str = ""  # the accepted message's Message-ID header field, as sent
    folded: str = ""  # the other sessions a folded row stands for (tables.py Event.folded)

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)


MESSAGE_ID_LIMIT = 255  # events.message_id's width; RFC 5322 ids are far shorter


def bounded_message_id(value: str) -> str:
    """What events.message_id holds of a Message-ID, and what `trace --message-id` looks
    for (the same function, so a pasted id finds its message, cut or not): escaped (no NUL
    or terminal escape reaches the store), cut to the column, without blanks at its ends (a
    cut can end on an unfolded line's blank, which a paste loses)."""
    return printable(value.strip())[:MESSAGE_ID_LIMIT].strip()


FIELDS = tuple(f.name for f in fields(EventRecord))
assert FIELDS[0] == "ts"
_REST = operator.attrgetter(*FIELDS[1:])
HOST, STAGE, ACTION, REASON, COUNT = (
    FIELDS.index(c) for c in ("host", "stage", "action", "reason", "count"))
_BY_HOST = operator.itemgetter(HOST)
COUNTS = operator.attrgetter("count")


def as_row(record: EventRecord) -> tuple[Any, ...]:
    """A record as the tuple the pipe carries and SQLite stores: FIELDS order, the time as
    integer microseconds (relay/store/sqltypes.py). marshal carries no datetimes, and pickling
    them had cost more than this."""
    return (to_micros(record.ts), *_REST(record))


def insert_sql(dialect: Dialect) -> str:
    """The driver-level INSERT of one `as_row` tuple into events."""
    return (f"INSERT INTO {Event.__tablename__} ({', '.join(FIELDS)}) "
            f"VALUES ({markers(dialect, len(FIELDS))})")


def write_rows(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert `as_row` tuples and count them into the rollups, in the caller's transaction
    (reports never disagree with the events). Through the driver's executemany:
    SQLAlchemy's per-row parameter processing cost more than the SQL."""
    if not rows:
        return
    sql = insert_sql(conn.dialect)
    if conn.dialect.name == "sqlite":
        # in host order, the (host, ts) index takes them page by page: 1.1x the rate
        executemany(conn, sql, sorted(rows, key=_BY_HOST))
    else:
        executemany(conn, sql, [(from_micros(r[0]), *r[1:]) for r in rows])
    add_to_rollups(conn, *(list(map(operator.itemgetter(i), rows))
                           for i in (0, HOST, STAGE, ACTION, REASON, COUNT)))
