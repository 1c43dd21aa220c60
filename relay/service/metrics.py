"""Prometheus metrics for `serve`: what the relay decides, how long scans take, how full
things are, how delivery goes, whether the scanners answer.

One process (`serve`): one registry, served over HTTP by prometheus-client's own thread (a
busy event loop still answers the scrape); the values the relay already keeps (connections,
queue, blocks, event and cache counters, scanner reachability) are copied into the metrics
at scrape time (`refresh`), so a scrape sees them as they are.

`serve --workers N`: prometheus-client's multiprocess mode. The supervisor makes a private
directory (`shared_directory`); each worker writes its metrics to its own memory-mapped
files there (`use_shared_directory`, before any metric exists); worker 0 serves
metrics.listen from all the files (MultiProcessCollector), so every worker counts. Counters
and histograms are summed, and the files of a dead worker stay: a total never goes back when
a worker is restarted. Each gauge says how workers combine (`multiprocess_mode`): open
connections add up, the queue and the blocks are the largest (only worker 0 delivers, all
see the same blocks), a scanner is up only if no worker found it down; the supervisor drops
a dead worker's gauges (`worker_exited`). The workers other than 0 copy their live values
into their files every REFRESH_INTERVAL; worker 0 at scrape time.

Why this and not each worker serving its own registry for the parent to merge: a merged
counter would drop by a dead worker's count when it restarts, which Prometheus reads as a
reset (rate() then counts the whole total again); the files keep it. The price: an
increment is a write to a memory map (about 2 us instead of 0.8 us, a few per session).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
    values,
)
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from filters.base import Context, Filter, Verdict

SCAN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REFRESH_INTERVAL = 1.0  # seconds between a worker's copies of its live values (workers > 0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def shared_directory() -> str:
    """The supervisor's side: a fresh, private directory for the workers' metric files."""
    return tempfile.mkdtemp(prefix="floodgate-metrics-")


def use_shared_directory(path: str) -> None:
    """A worker's side, after the fork and before any metric is made: its metrics go to
    memory-mapped files in `path` (prometheus-client reads the variable at import, which
    happened in the supervisor, hence the value class set here)."""
    os.environ[MULTIPROC_ENV] = path
    values.ValueClass = values.MultiProcessValue()


def worker_exited(path: str, pid: int) -> None:
    """The supervisor's side: a worker is gone, its live gauges (connections ...) with it."""
    mark_process_dead(pid, path)


def remove_shared_directory(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class _Connections(Protocol):
    @property
    def open_connections(self) -> int: ...


class _Queue(Protocol):
    @property
    def queued(self) -> int: ...
    def oldest_received(self) -> float | None: ...


class _Blocks(Protocol):
    def active_count(self, now: datetime) -> int: ...


class _Events(Protocol):
    @property
    def dropped(self) -> int: ...
    @property
    def aggregated(self) -> int: ...
    @property
    def written(self) -> int: ...
    def rows_waiting(self) -> int: ...


class Watched(Protocol):
    """What the metrics read from a running relay at each refresh, through each part's own
    public accessors (the relay's Relay is one; the metrics know nothing else of it). The
    filters are read the same way, where they have them: `cache` (hits, misses),
    `reachable()` (scanner addresses up or down), `zone_timeouts()` (the DNSBL's)."""

    @property
    def handler(self) -> _Connections: ...
    @property
    def delivery(self) -> _Queue: ...
    @property
    def gate(self) -> _Blocks: ...
    @property
    def events(self) -> _Events: ...


class TimedFilter:
    """A filter whose `check` is timed into the scan latency histogram; otherwise the same
    filter (the pipeline sees its name, stage, timeout and on_error)."""

    def __init__(self, inner: Filter, histogram: Histogram):
        self.inner = inner
        self.name = inner.name
        self.stage = inner.stage
        self.timeout = inner.timeout
        self.on_error = inner.on_error
        self._observe = histogram.labels(scanner=inner.name).observe

    async def check(self, ctx: Context) -> Verdict | None:
        started = time.perf_counter()
        try:
            return await self.inner.check(ctx)
        finally:  # timeouts (cancellation) count too: they are the slowest scans
            self._observe(time.perf_counter() - started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _Mirror:
    """A counter that follows a count the relay keeps itself (the event writer's, a cache's):
    each refresh adds what the count grew by. In multiprocess mode a counter must live in
    the worker's files; the relay's own counts live in its objects."""

    def __init__(self, counter: Counter):
        self.counter = counter
        self.seen: dict[tuple[str, ...], float] = {}

    def follow(self, value: float, *labels: str) -> None:
        counter = self.counter.labels(*labels) if labels else self.counter  # a series at 0
        grew = value - self.seen.get(labels, 0.0)
        self.seen[labels] = value
        if grew > 0:
            counter.inc(grew)


class _RefreshingRegistry(CollectorRegistry):
    """A registry that brings the live values up to date before each scrape."""

    def __init__(self, before: Callable[[], None]):
        super().__init__()
        self._before = before

    def collect(self) -> Iterable[Metric]:
        self._before()
        yield from super().collect()


class Metrics:
    def __init__(self, build: tuple[str, str, str] = ("unknown", "unknown", "unknown")) -> None:
        """`build`: the floodgate, Python and aiosmtpd versions for floodgate_build_info
        (read by the composition root: metrics import nothing of relay)."""
        # multiprocess mode: where the workers' files are (see the module docstring)
        self.shared = (os.environ.get(MULTIPROC_ENV)
                       if values.ValueClass is not values.MutexValue else None)
        self.registry = _RefreshingRegistry(self.refresh)
        r = self.registry
        self.build_info = Gauge(
            "floodgate_build_info", "Always 1: the versions this relay runs",
            ["version", "python", "aiosmtpd"], registry=r, multiprocess_mode="livemax")
        self.build_info.labels(*build).set(1)
        self.decisions = Counter("floodgate_smtp_decisions", "SMTP decisions",
                                 ["stage", "action", "reason"], registry=r)
        self.scan_seconds = Histogram("floodgate_scan_duration_seconds",
                                      "Time one filter took to check (DNSBL, virus, spam)",
                                      ["scanner"], buckets=SCAN_BUCKETS, registry=r)
        self.connections = Gauge("floodgate_smtp_connections", "Open SMTP connections",
                                 registry=r, multiprocess_mode="livesum")
        self.spool = Gauge("floodgate_spool_messages", "Messages in the delivery queue",
                           registry=r, multiprocess_mode="livemax")
        self.oldest = Gauge(
            "floodgate_queue_oldest_message_age_seconds",
            "Age of the oldest message in the delivery queue not on hold (0: none)",
            registry=r, multiprocess_mode="livemax")
        self.outcomes = Counter(
            "floodgate_delivery_outcomes",
            "Recipients delivered, deferred or bounced, by the class and subject of the "
            "status (5.1: addressing, 4.4: network and routing, bounced 4.4: expired ...)",
            ["outcome", "status"], registry=r)
        self.blocked = Gauge("floodgate_blocked_hosts", "Hosts and networks blocked now",
                             registry=r, multiprocess_mode="livemax")
        self.scanner_up = Gauge(
            "floodgate_scanner_up",
            "1 while the last call to a scanner address got through, 0 while it could not "
            "connect or timed out",
            ["scanner", "address"], registry=r, multiprocess_mode="livemin")
        self.dnsbl_timeouts = _Mirror(Counter("floodgate_dnsbl_timeouts",
                                              "DNSBL queries that timed out, per zone",
                                              ["zone"], registry=r))
        self.events_dropped = _Mirror(Counter(
            "floodgate_events_dropped", "Events lost because the buffer was full", registry=r))
        self.events_aggregated = _Mirror(Counter(
            "floodgate_events_aggregated",
            "Events counted into another event's row (per host, reason and minute) because "
            "the buffer was over half full", registry=r))
        self.events_written = _Mirror(Counter(
            "floodgate_events_written", "Events written to the store", registry=r))
        self.events_buffered = Gauge("floodgate_events_buffered",
                                     "Event rows waiting in memory for the store",
                                     registry=r, multiprocess_mode="livesum")
        self.cache_hits = _Mirror(Counter("floodgate_cache_hits", "Verdict cache hits",
                                          ["cache"], registry=r))
        self.cache_misses = _Mirror(Counter("floodgate_cache_misses", "Verdict cache misses",
                                            ["cache"], registry=r))
        self._server: Any = None
        self._filters: Sequence[Filter] = ()
        self._decided: dict[tuple[str, str, str], Callable[[], None]] = {}
        self._outcome: dict[tuple[str, str], Callable[[], None]] = {}
        self._refresh_lock = threading.Lock()
        self._read: Callable[[], None] = lambda: None

    def decision(self, stage: str, action: str, reason: str) -> None:
        """Count one SMTP decision. Called for every RCPT of a flood: each label set's
        counter is looked up once (prometheus_client's labels() takes a lock and checks
        its arguments every call)."""
        key = (stage, action, reason)
        inc = self._decided.get(key)
        if inc is None:
            inc = self._decided[key] = self.decisions.labels(*key).inc
        inc()

    def delivery_outcome(self, outcome: str, status: str) -> None:
        """Count one recipient's delivery outcome (delivered, deferred, bounced)."""
        key = (outcome, status)
        inc = self._outcome.get(key)
        if inc is None:
            inc = self._outcome[key] = self.outcomes.labels(*key).inc
        inc()

    def timed(self, filters: Iterable[Filter]) -> list[Filter]:
        """Time every check except the recipient lookup (a dict probe, nothing to see)."""
        return [f if f.name == "recipients" else TimedFilter(f, self.scan_seconds)
                for f in filters]

    def watch(self, relay: Watched, filters: Sequence[Filter]) -> None:
        """Read the relay's own state (through `relay`'s parts and the filters' public
        accessors) at each refresh."""

        self._filters = filters

        def read() -> None:
            self.connections.set(relay.handler.open_connections)
            self.spool.set(relay.delivery.queued)
            oldest = relay.delivery.oldest_received()
            self.oldest.set(max(0.0, time.time() - oldest) if oldest is not None else 0.0)
            self.blocked.set(relay.gate.active_count(datetime.now(UTC)))
            events = relay.events
            self.events_dropped.follow(events.dropped)
            self.events_aggregated.follow(events.aggregated)
            self.events_written.follow(events.written)
            self.events_buffered.set(events.rows_waiting())
            for f in self._filters:
                cache = getattr(f, "cache", None)
                if cache is not None and hasattr(cache, "hits"):
                    self.cache_hits.follow(cache.hits, f.name)
                    self.cache_misses.follow(cache.misses, f.name)
                reachable = getattr(f, "reachable", None)
                if reachable is not None:
                    for address, up in reachable().items():
                        self.scanner_up.labels(f.name, address).set(1 if up else 0)
                zone_timeouts = getattr(f, "zone_timeouts", None)
                if zone_timeouts is not None:
                    for zone, count in zone_timeouts().items():
                        self.dnsbl_timeouts.follow(count, zone)

        self._read = read
        self.refresh()

    def rewatch(self, filters: Sequence[Filter]) -> None:
        """A reload built new filters: theirs are the caches and scanners to report."""
        self._filters = filters

    def refresh(self) -> None:
        """Copy the relay's live values into the metrics (scrape thread or event loop)."""
        with self._refresh_lock:
            self._read()

    async def refresh_every(self, interval: float = REFRESH_INTERVAL) -> None:
        """A worker that does not serve the scrape: its live values, into its files."""
        while True:
            await asyncio.sleep(interval)
            self.refresh()

    def serve(self, host: str, port: int) -> None:
        """Start the /metrics endpoint (every worker's metrics in multiprocess mode); OSError
        if the address cannot be bound."""
        served = self.registry
        if self.shared is not None:
            served = _RefreshingRegistry(self.refresh)
            MultiProcessCollector(served, self.shared)
        self._server, _ = start_http_server(port, addr=host, registry=served)

    def close(self) -> None:
        self.refresh()  # the last counts into the files before the worker goes
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

