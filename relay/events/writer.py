"""Event recording off the hot path: the SMTP reply never waits for the database.

Decisions go into a bounded in-memory buffer; one task hands them in batches to the event
writer process (relay/events/process.py: a thread here fought the event loop for the GIL).
When the store is unreachable, events wait in the buffer and are written when it comes
back, and mail keeps flowing.

A flood (or an outage) must not blind the scorer: once half the buffer holds single
events, further events are folded into one row per minute, host, client, stage, action
and reason, carrying `count` (and the latest time, and the first event's other fields as
a sample); only the per-recipient detail is lost. The other half of the buffer holds those
rows. When it is full, accepted events (connections, known recipients) are summarised
across hosts (host `*`) to make room for offences; only what still does not fit is
counted as dropped and logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from relay.config.scoring import ScoringConfig
from relay.events.process import EventProcess, WriterDown
from relay.events.record import COUNTS, EventRecord, as_row
from relay.store.polling import poll_every
from relay.store.rollups import prune
from relay.store.tables import SUMMARY_HOST

log = logging.getLogger("floodgate.events")


Minute = datetime
FoldKey = tuple[Minute, str, str, str, str, str]  # minute, host, client, stage, action, reason
SummaryKey = tuple[Minute, str, str, str]  # minute, stage, action, reason
ACCEPT = "accept"  # the action of the least valuable events: summarised first
# sessions a folded row names besides its first: bounds the row and the buffer's memory
# (16 x 13 bytes a row); past them the row says `+`, that it stood for more
FOLDED_SESSIONS = 16


class EventWriter:
    DEPTH = 2  # batches in flight to the writer process at most

    def __init__(self, engine: Engine, *, batch: int = 500, interval: float = 0.5,
                 capacity: int = 100_000, offences: Collection[str] | None = None):
        self.engine = engine
        # accepted events of these reasons score (`pregreet`): never summarised across hosts
        self.offences = frozenset(ScoringConfig().offences() if offences is None else offences)
        self.process = EventProcess(engine.url.render_as_string(hide_password=False))
        self.batch = batch
        self.interval = interval
        self.capacity = capacity
        # Half the capacity for single events, half for folded rows: memory stays bounded
        # by `capacity` rows whatever the rate, and a flood costs the writer one row per
        # host and reason a minute instead of one per event.
        self.high = max(1, capacity // 2)
        self.keys = max(1, capacity - self.high)
        self.buffer: collections.deque[EventRecord] = collections.deque()
        self.folded: dict[FoldKey, EventRecord] = {}
        self._accepted: dict[FoldKey, None] = {}  # the folds of accepted events, oldest first
        # Accepted events of all hosts, once `folded` is full: a row per minute and outcome
        # (a few per minute, whatever the number of hosts: the outcomes are ours, not the
        # client's), so room is never taken from an offence.
        self.summary: dict[SummaryKey, EventRecord] = {}
        self.dropped = 0
        # events counted into another event's row instead of their own: rows written are
        # the events emitted less these and those dropped
        self.aggregated = 0
        self.written = 0  # events, not rows
        self._wake = asyncio.Event()
        self._closing = False
        self._failing_since: float | None = None
        self._last_drop_log = 0.0
        self._last_fold_log = 0.0

    def emit(self, record: EventRecord) -> None:
        """Queue one event; never blocks, never raises."""
        if len(self.buffer) < self.high:
            self.buffer.append(record)
            if len(self.buffer) >= self.batch:
                self._wake.set()
            return
        self._fold(record)
        self._wake.set()

    def rows_waiting(self) -> int:
        """Rows held in memory for the store (a folded row stands for many events)."""
        return len(self.buffer) + len(self.folded) + len(self.summary)

    def events_waiting(self) -> int:
        return sum(map(COUNTS, itertools.chain(
            self.buffer, self.folded.values(), self.summary.values())))

    def _fold(self, record: EventRecord) -> None:
        """Count `record` into its host's row for its minute and reason; when those rows
        fill their half, an offence makes room by summarising a host's accepted events."""
        minute = record.ts.replace(second=0, microsecond=0)
        key = (minute, record.host, record.client, record.stage, record.action, record.reason)
        row = self.folded.get(key)
        if row is not None:
            self._merge(row, record)
            return
        cheap = record.action == ACCEPT and record.reason not in self.offences
        if len(self.folded) >= self.keys:
            if cheap:
                self._summarise(minute, record)
                return
            if not self._accepted:
                self._drop(record.count)  # only offences left, and no room for this one
                return
            oldest = next(iter(self._accepted))
            del self._accepted[oldest]
            self._summarise(oldest[0], self.folded.pop(oldest))
        self.folded[key] = dataclasses.replace(record)  # ours to count into
        if cheap:
            self._accepted[key] = None
        now = time.monotonic()
        if now - self._last_fold_log >= 10:
            self._last_fold_log = now
            log.warning("event buffer over half full, folding events per host and reason "
                        "capacity=%d folded_rows=%d aggregated_total=%d", self.capacity,
                        len(self.folded), self.aggregated)

    def _summarise(self, minute: Minute, record: EventRecord) -> None:
        key = (minute, record.stage, record.action, record.reason)
        row = self.summary.get(key)
        if row is not None:
            self._merge(row, record)
            return
        self.summary[key] = dataclasses.replace(
            record, host=SUMMARY_HOST, client=SUMMARY_HOST, helo="", sender="", recipient="",
            detail="", size=None, queue_id="", session="", message_id="", folded="")

    def _merge(self, row: EventRecord, record: EventRecord) -> None:
        """Count `record` (itself a row of one or more events) into `row`, naming its
        session in the row's `folded` (a summary row names none): `trace REF` finds it."""
        row.count += record.count
        if record.ts > row.ts:  # the latest: blocks run from a host's last offence
            row.ts = record.ts
        sid, folded = record.session, row.folded
        # the usual case first, one test: a session named already ("" is in any string);
        # a short string, not a set: one per folded row, searched in a few ns
        if sid not in folded and sid != row.session and row.session \
                and not folded.endswith("+"):
            row.folded = (f"{folded} {sid}" if folded.count(" ") < FOLDED_SESSIONS - 1
                          else f"{folded} +") if folded else sid
        self.aggregated += 1  # one row fewer: `record`'s other events were counted before

    def _drop(self, n: int) -> None:
        self.dropped += n
        now = time.monotonic()
        if now - self._last_drop_log >= 10:
            self._last_drop_log = now
            log.error("event buffer full capacity=%d dropped_total=%d", self.capacity,
                      self.dropped)

    def _take(self, n: int) -> list[EventRecord]:
        """Up to `n` rows for the next batch: the summarised and folded rows first (each
        stands for many events, and they free room for the next folds), then the oldest
        single events."""
        rows = _pop_some(self.summary, n)
        rows += _pop_some(self.folded, n - len(rows))
        if not self.folded:
            self._accepted.clear()
        elif self._accepted:
            self._accepted = {k: None for k in self._accepted if k in self.folded}
        rows.extend(self.buffer.popleft() for _ in range(min(n - len(rows), len(self.buffer))))
        return rows

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
                    rows = self._take(self.batch)
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
                              self.rows_waiting(), failed[-1][1])
                if self._closing:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        finally:  # cancelled (a close that timed out): what was in flight is unwritten
            unwritten = []
            for rows, task in inflight:
                if task.done() and not task.cancelled() and task.exception() is None:
                    self.written += sum(map(COUNTS, rows))
                else:
                    task.cancel()
                    unwritten.append((rows, None))
            self._put_back(unwritten)

    def _send_more(self, inflight: int) -> bool:
        """Whether to send another batch now. A second one goes out while the first is
        written only when a whole batch is waiting: at a trickle, events gather into the
        next batch instead of going out in many small transactions."""
        waiting = self.rows_waiting()
        if not waiting or inflight >= self.DEPTH:
            return False
        return inflight == 0 or waiting >= self.batch or self._closing

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
                self.written += sum(map(COUNTS, rows))
            inflight.popleft()
            if not failed:
                break
        return failed

    def _put_back(self, batches: list[tuple[list[EventRecord], Any]]) -> None:
        """Unwritten batches back at the front of the buffer, in their order; beyond its
        half of the capacity, the newest events are folded (as if they came now)."""
        for rows, _ in reversed(batches):
            self.buffer.extendleft(reversed(rows))
        while len(self.buffer) > self.high:
            self._fold(self.buffer.pop())

    async def close(self, task: asyncio.Task[None], timeout: float = 10.0) -> None:
        """Flush what is buffered (within `timeout`) and stop."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(task, timeout)
        except TimeoutError:
            task.cancel()
        await self.process.close()
        if self.rows_waiting():
            log.error("shutting down with unwritten events lost=%d", self.events_waiting())


def _pop_some(rows: dict[Any, EventRecord], n: int) -> list[EventRecord]:
    """Up to `n` of `rows`, oldest first, taken out of it."""
    if len(rows) <= n:
        taken = list(rows.values())
        rows.clear()
        return taken
    return [rows.pop(key) for key in list(itertools.islice(rows, max(0, n)))]


async def prune_loop(engine: Engine, events_age: float, rollups_age: float,
                     interval: float) -> None:
    """Retention: drop events older than `events_age` and rollups older than `rollups_age`
    (0 keeps forever), at start and every `interval` seconds. Relays sharing a store may
    all run it."""

    def step() -> None:
        now = datetime.now(UTC)
        events, rollups = prune(
            engine,
            events_before=now - timedelta(seconds=events_age) if events_age else None,
            rollups_before=now - timedelta(seconds=rollups_age) if rollups_age else None)
        if events or rollups:
            log.info("pruned events=%d rollup_rows=%d", events, rollups)

    await poll_every(interval, step, logger=log.name, failed="pruning failed, will retry",
                     recovered="pruning running again", first=True)
