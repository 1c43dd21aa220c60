"""Event recording off the hot path: the SMTP reply never waits for the database.

Decisions go into a bounded in-memory buffer; one task hands them in batches to the event
writer process (relay/event_proc.py: a thread here fought the event loop for the GIL).
When the store is unreachable, events wait in the buffer and are written when it comes
back; what does not fit is counted and logged, and mail keeps flowing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import operator
import time
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Dialect, Engine
from sqlalchemy.exc import SQLAlchemyError

from relay.dbapi import executemany, markers
from relay.event_proc import EventProcess, WriterDown
from relay.models import Event
from relay.rollup_models import add_to_rollups, prune
from relay.sqltypes import from_micros, to_micros
from relay.store import describe, in_store_thread

log = logging.getLogger("floodgate.events")


@dataclass(slots=True)
class EventRecord:
    ts: datetime
    node: str
    client: str
    host: str
    stage: str
    action: str
    reason: str
    code: int = 0
    helo: str = ""
    sender: str = ""
    recipient: str = ""
    detail: str = ""
    size: int | None = None
    queue_id: str = ""

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)


FIELDS = tuple(f.name for f in fields(EventRecord))
assert FIELDS[0] == "ts"
_REST = operator.attrgetter(*FIELDS[1:])
HOST, STAGE, ACTION, REASON = (FIELDS.index(c) for c in ("host", "stage", "action", "reason"))
_BY_HOST = operator.itemgetter(HOST)


def as_row(record: EventRecord) -> tuple[Any, ...]:
    """A record as the tuple the pipe carries and SQLite stores: FIELDS order, the time as
    integer microseconds (relay/sqltypes.py). marshal carries no datetimes, and pickling
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
                           for i in (0, HOST, STAGE, ACTION, REASON)))


class EventWriter:
    DEPTH = 2  # batches in flight to the writer process at most

    def __init__(self, engine: Engine, *, batch: int = 500, interval: float = 0.5,
                 capacity: int = 100_000):
        self.engine = engine
        self.process = EventProcess(engine.url.render_as_string(hide_password=False))
        self.batch = batch
        self.interval = interval
        self.capacity = capacity
        self.buffer: collections.deque[EventRecord] = collections.deque()
        self.dropped = 0
        self.written = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._failing_since: float | None = None
        self._last_drop_log = 0.0

    def emit(self, record: EventRecord) -> None:
        """Queue one event; never blocks, never raises."""
        if len(self.buffer) >= self.capacity:
            self._drop(1)
            return
        self.buffer.append(record)
        if len(self.buffer) >= self.batch:
            self._wake.set()

    def _drop(self, n: int) -> None:
        self.dropped += n
        now = time.monotonic()
        if now - self._last_drop_log >= 10:
            self._last_drop_log = now
            log.error("event buffer full capacity=%d dropped_total=%d", self.capacity,
                      self.dropped)

    async def run(self) -> None:
        """Write batches until closed; retries with back-off while the store is down."""
        backoff = self.interval
        with contextlib.suppress(OSError):  # ready before the first batch (else: retried)
            await self.process.ensure()
        inflight: collections.deque[tuple[list[EventRecord], asyncio.Task[None]]] = \
            collections.deque()
        try:
            while True:
                while self._send_more(len(inflight)):
                    rows = [self.buffer.popleft()
                            for _ in range(min(self.batch, len(self.buffer)))]
                    task = asyncio.create_task(self.process.write(list(map(as_row, rows))))
                    inflight.append((rows, task))
                if not inflight:
                    if self._closing:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.interval)
                    self._wake.clear()
                    continue
                failed = await self._settle(inflight)
                if not failed:
                    backoff = self.interval
                    if self._failing_since is not None:
                        log.warning("store reachable again after %.0fs, writing waiting events",
                                    time.monotonic() - self._failing_since)
                        self._failing_since = None
                    continue
                self._put_back(failed)
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.error("store unreachable, events wait in memory waiting=%d error=%s",
                              len(self.buffer), failed[-1][1])
                if self._closing:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        finally:  # cancelled (a close that timed out): what was in flight is unwritten
            unwritten = []
            for rows, task in inflight:
                if task.done() and not task.cancelled() and task.exception() is None:
                    self.written += len(rows)
                else:
                    task.cancel()
                    unwritten.append((rows, None))
            self._put_back(unwritten)

    def _send_more(self, inflight: int) -> bool:
        """Whether to send another batch now. A second one goes out while the first is
        written only when a whole batch is waiting: at a trickle, events gather into the
        next batch instead of going out in many small transactions."""
        if not self.buffer or inflight >= self.DEPTH:
            return False
        return inflight == 0 or len(self.buffer) >= self.batch or self._closing

    async def _settle(self, inflight: collections.deque[tuple[list[EventRecord],
                                                             asyncio.Task[None]]]
                      ) -> list[tuple[list[EventRecord], WriterDown]]:
        """Wait for the oldest batch; if it failed, for all in flight. The batches that
        failed, oldest first, with why."""
        failed: list[tuple[list[EventRecord], WriterDown]] = []
        while inflight:
            rows, task = inflight[0]
            try:
                await task
            except WriterDown as e:
                failed.append((rows, e))
            else:
                self.written += len(rows)
            inflight.popleft()
            if not failed:
                break
        return failed

    def _put_back(self, batches: list[tuple[list[EventRecord], Any]]) -> None:
        """Unwritten batches back at the front of the buffer, in their order; beyond
        capacity, the newest events are dropped (and counted)."""
        for rows, _ in reversed(batches):
            self.buffer.extendleft(reversed(rows))
        overflow = len(self.buffer) - self.capacity
        for _ in range(max(0, overflow)):
            self.buffer.pop()
        if overflow > 0:
            self._drop(overflow)

    async def close(self, task: asyncio.Task[None], timeout: float = 10.0) -> None:
        """Flush what is buffered (within `timeout`) and stop."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(task, timeout)
        except TimeoutError:
            task.cancel()
        await self.process.close()
        if self.buffer:
            log.error("shutting down with unwritten events lost=%d", len(self.buffer))


async def prune_loop(engine: Engine, events_age: float, rollups_age: float,
                     interval: float) -> None:
    """Retention: drop events older than `events_age` and rollups older than `rollups_age`
    (0 keeps forever), every `interval` seconds. Relays sharing a store may all run it."""
    while True:
        now = datetime.now(UTC)
        try:
            events, rollups = await in_store_thread(
                prune, engine,
                events_before=now - timedelta(seconds=events_age) if events_age else None,
                rollups_before=now - timedelta(seconds=rollups_age) if rollups_age else None)
            if events or rollups:
                log.info("pruned events=%d rollup_rows=%d", events, rollups)
        except (SQLAlchemyError, OSError) as e:
            log.warning("pruning failed, will retry error=%s", describe(e))
        await asyncio.sleep(interval)
