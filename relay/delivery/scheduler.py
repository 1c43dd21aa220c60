"""The scheduler: every spooled message in memory (envelope and progress), due messages
handed to per-destination connection tasks within the concurrency limits, progress written
to the state file after each attempt, and the spool re-read for the operator's holds, flush
requests and removals. A message file is removed only when no recipient is pending, so a
crash can repeat a delivery but never skip one."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable

from relay.config.delivery import DeliveryConfig
from relay.delivery import queue_admin
from relay.delivery.client import Connection, NextHopClient
from relay.delivery.outcomes import Outcomes
from relay.delivery.pressure import BackPressure
from relay.delivery.spool import Envelope, IncompleteEnvelope, MessageState, Spool
from relay.delivery.work import Destination, Entry, Result, Unit
from relay.logs import kv

log = logging.getLogger("floodgate.delivery")

FLUSH_CHECK_INTERVAL = 0.5


def backoff(attempts: int, minimum: float, maximum: float) -> float:
    """Postfix-like: the wait doubles with each failed attempt, between the two bounds."""
    return min(maximum, minimum * 2 ** max(0, min(attempts - 1, 40)))


class Scheduler:
    """`route` names each recipient's next hop; `client` carries units to it; `outcomes`
    records the replies; `pressure` is told what enters and leaves the queue."""

    def __init__(self, settings: DeliveryConfig, spool: Spool, route: Callable[[str], str],
                 client: NextHopClient, outcomes: Outcomes, pressure: BackPressure):
        self.settings = settings
        self.spool = spool
        self.route = route
        self.client = client
        self.outcomes = outcomes
        self.pressure = pressure
        self.entries: dict[str, Entry] = {}
        self.held: set[str] = set()
        self.destinations: dict[str, Destination] = {}
        self.heap: list[tuple[float, int, str]] = []
        self.seq = itertools.count()
        self.wake = asyncio.Event()
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._flush_checked = 0.0
        self._background: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        """Messages in the queue (the spool's, as this scheduler knows it)."""
        return len(self.entries)

    def oldest_received(self) -> float | None:
        """When the oldest message not on hold was received (epoch seconds), None if there
        is none. Read by the metrics' thread: the copy of the entries is taken in one step."""
        held = self.held
        received = [e.envelope.received for e in list(self.entries.values())
                    if e.due >= 0 and e.envelope.queue_id not in held]
        return min(received, default=None)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load the spool (what a crash or restart left), then run."""
        self.loop = asyncio.get_running_loop()
        loaded = await asyncio.to_thread(self._read_all, set())
        for envelope, state in loaded:
            self._add(envelope, state)
        await asyncio.to_thread(self._drop_orphan_states)
        self.held = await asyncio.to_thread(self.spool.held)
        self.spool.listeners.append(self.spooled)
        self.task = asyncio.create_task(self._run(), name="delivery")
        log.info("delivery started %s", kv(queued=len(self.entries), held=len(self.held),
                                           enabled=self.settings.enabled))

    async def stop(self, grace: float) -> None:
        """Let attempts in flight finish within `grace`; anything cut off is retried later."""
        self.stopping = True
        self.wake.set()
        if self.spooled in self.spool.listeners:
            self.spool.listeners.remove(self.spooled)
        tasks = [t for d in self.destinations.values() for t in d.tasks]
        if self.task is not None:
            tasks.append(self.task)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # -- the in-memory queue ---------------------------------------------------------------

    def _read_all(self, known: set[str]) -> list[tuple[Envelope, MessageState]]:
        out = []
        for queue_id in self.spool.ids():
            if queue_id in known:
                continue
            try:
                envelope = self.spool.read_envelope(queue_id)
            except (FileNotFoundError, IncompleteEnvelope):
                continue  # gone, or not a message yet
            except (OSError, ValueError, TypeError) as e:
                log.error("unreadable spool file skipped %s", kv(queue_id=queue_id, error=e))
                continue
            out.append((envelope, self.spool.load_state(envelope)))
        return out

    def _drop_orphan_states(self) -> None:
        for path in self.spool.state.glob("*.json"):
            if not self.spool.path(path.stem).exists():
                path.unlink(missing_ok=True)
        for path in self.spool.state.glob(".*.tmp"):
            path.unlink(missing_ok=True)

    def _add(self, envelope: Envelope, state: MessageState) -> None:
        if envelope.queue_id in self.entries:
            return
        entry = Entry(envelope, state)
        self.entries[envelope.queue_id] = entry
        self.pressure.added(envelope)
        self._schedule(entry, state.next_attempt)

    def _forget(self, queue_id: str) -> None:
        """The message has left the spool (delivered, bounced, expired or deleted)."""
        entry = self.entries.pop(queue_id, None)
        if entry is not None:
            self.pressure.removed(entry.envelope)

    def spooled(self, envelope: Envelope) -> None:
        """Spool listener (runs in the writer's thread): new mail is due at once."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._arrived, envelope)

    def _arrived(self, envelope: Envelope) -> None:
        self._add(envelope, MessageState.fresh(envelope))
        self.wake.set()

    def _schedule(self, entry: Entry, when: float) -> None:
        entry.due = when
        entry.state.next_attempt = when
        heapq.heappush(self.heap, (when, next(self.seq), entry.envelope.queue_id))

    def _idle(self, queue_id: str) -> bool:
        """Known, and not in the hands of a delivery or of _finalize."""
        entry = self.entries.get(queue_id)
        return entry is not None and not entry.inflight and not entry.finalizing

    async def scan(self) -> None:
        """Pick up files the listener missed, forget deleted ones, re-read holds.

        Only a message known before the directory was listed can have been removed by the
        operator: one spooled while the listing ran is told to us by its listener before
        the listing comes back, and is missing from it only because it arrived late. The
        file of each candidate is looked for once more before the claim is made."""
        known = set(self.entries)
        on_disk = set(await asyncio.to_thread(self.spool.ids))
        vanished = [i for i in known - on_disk if self._idle(i)]
        if vanished:
            gone = await asyncio.to_thread(
                lambda: [i for i in vanished if not self.spool.path(i).exists()])
            for queue_id in gone:
                if self._idle(queue_id):
                    self._forget(queue_id)
                    log.info("removed from the queue by the operator %s",
                             kv(queue_id=queue_id))
        for envelope, state in await asyncio.to_thread(self._read_all, set(self.entries)):
            self._add(envelope, state)
        self.held = await asyncio.to_thread(self.spool.held)
        now = time.time()
        for queue_id, entry in self.entries.items():
            if entry.due < 0 and queue_id not in self.held:  # hold marker gone: due again
                self._schedule(entry, now)

    def _flush(self, requests: set[str]) -> None:
        ids = list(self.entries) if queue_admin.FLUSH_ALL in requests else requests
        for d in self.destinations.values():
            d.dead_until = 0.0
        now = time.time()
        for queue_id in ids:
            entry = self.entries.get(queue_id)
            if entry is not None and not entry.inflight and not entry.finalizing:
                self._schedule(entry, now)
        log.info("flush %s", kv(requested=",".join(sorted(requests)), messages=len(ids)))

    # -- running attempts --------------------------------------------------------------------

    async def _run(self) -> None:
        last_scan = time.monotonic()
        while not self.stopping:
            try:
                requests: set[str] = set()
                if time.monotonic() - self._flush_checked >= FLUSH_CHECK_INTERVAL:
                    self._flush_checked = time.monotonic()
                    requests = await asyncio.to_thread(queue_admin.take_flush_requests,
                                                       self.spool)
                if time.monotonic() - last_scan >= self.settings.scan_interval:
                    last_scan = time.monotonic()
                    await self.scan()
                if requests:  # holds made just before a flush must count
                    self.held = await asyncio.to_thread(self.spool.held)
                    self._flush(requests)
                if self.settings.enabled:
                    self._dispatch(time.time())
            except Exception:  # the scheduler must outlive any one bad file or surprise
                log.exception("delivery scheduler error")
            wait = min(FLUSH_CHECK_INTERVAL, self.settings.scan_interval)
            if self.heap and self.settings.enabled:
                wait = max(0.0, min(wait, self.heap[0][0] - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait)
            self.wake.clear()

    def _dispatch(self, now: float) -> None:
        while self.heap and self.heap[0][0] <= now:
            due, _, queue_id = heapq.heappop(self.heap)
            entry = self.entries.get(queue_id)
            if entry is None or entry.due != due or entry.inflight or entry.finalizing:
                continue
            if queue_id in self.held:
                entry.due = -1.0  # parked: a release (flush request) reschedules it
                continue
            groups: dict[str, list[str]] = {}
            for rcpt in entry.state.pending():
                groups.setdefault(self.route(rcpt), []).append(rcpt)
            if not groups:  # settled before a crash, not yet removed
                entry.inflight = 1
                task = asyncio.create_task(self._settle(entry, {}))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                continue
            for hop, rcpts in groups.items():
                dest = self.destinations.get(hop)
                if dest is None:
                    dest = self.destinations[hop] = Destination(hop)
                dest.pending.append(Unit(entry, rcpts))
                entry.inflight += 1
        self._spawn()

    def _spawn(self) -> None:
        """Open connections where work waits, within the per-destination and total limits."""
        active = sum(len(d.tasks) for d in self.destinations.values())
        for dest in self.destinations.values():
            while (len(dest.tasks) < min(len(dest.pending), self.settings.per_destination)
                   and active < self.settings.workers and not self.stopping):
                task = asyncio.create_task(self._connection(dest), name=f"deliver {dest.hop}")
                dest.tasks.add(task)
                task.add_done_callback(lambda t, d=dest: self._done(d, t))
                active += 1

    def _done(self, dest: Destination, task: asyncio.Task[None]) -> None:
        dest.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())
        if not self.stopping:
            self._spawn()

    async def _connection(self, dest: Destination) -> None:
        """Deliver the destination's waiting units over one reused connection."""
        connection = Connection(self.client, dest, self.spool)
        try:
            while dest.pending and not self.stopping:
                unit = dest.pending.popleft()
                held = unit.entry.envelope.queue_id in self.held
                results = await connection.deliver(unit, held)
                await self._settle(unit.entry, results)
        finally:
            await connection.close()

    # -- after an attempt ------------------------------------------------------------------

    async def _settle(self, entry: Entry, results: dict[str, Result]) -> None:
        """Apply one unit's replies; after the message's last unit, spool DSNs, save or
        remove."""
        now = time.time()
        self.outcomes.apply(entry, results, now)
        entry.inflight -= 1
        if entry.inflight > 0:
            return
        entry.inflight = 0
        entry.finalizing = True
        try:
            await self._finalize(entry, now)
        finally:
            entry.finalizing = False

    async def _finalize(self, entry: Entry, now: float) -> None:
        queue_id = entry.envelope.queue_id
        await self.outcomes.settle_failures(entry)
        if not self.spool.path(queue_id).exists():
            self._forget(queue_id)
            return
        if not entry.state.pending():
            await asyncio.to_thread(self.spool.remove, queue_id)
            self._forget(queue_id)
            log.info("removed %s", kv(queue_id=queue_id, reason="all recipients settled"))
            return
        state = entry.state
        state.attempts += 1
        state.last_attempt = now
        delay = backoff(state.attempts, self.settings.min_backoff, self.settings.max_backoff)
        self._schedule(entry, now + delay)
        try:
            await asyncio.to_thread(self.spool.save_state, queue_id, state)
        except OSError as e:
            log.error("cannot save delivery state %s", kv(queue_id=queue_id, error=e))
        self.wake.set()
