"""Prometheus metrics for `serve`: what the relay decides, how long scans take, how full
things are. One registry per relay (tests run several in one process); served over HTTP
by prometheus-client's own thread, so a busy event loop still answers the scrape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from filters.base import Context, Filter, Verdict

SCAN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Connections(Protocol):
    @property
    def open_connections(self) -> int: ...


class _Queue(Protocol):
    @property
    def queued(self) -> int: ...


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
    """What the metrics read from a running relay at scrape time, through each part's own
    public accessors (the relay's Relay is one; the metrics know nothing else of it)."""

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


class _RelayCollector(Collector):
    """Values the relay already keeps, read at scrape time instead of mirrored."""

    def __init__(self, relay: Watched, filters: Sequence[Filter]):
        self.relay = relay
        self.filters = filters

    def collect(self) -> Iterator[Metric]:
        events = self.relay.events
        dropped = CounterMetricFamily("floodgate_events_dropped",
                                      "Events lost because the buffer was full")
        dropped.add_metric([], events.dropped)
        yield dropped
        aggregated = CounterMetricFamily(
            "floodgate_events_aggregated",
            "Events counted into another event's row (per host, reason and minute) because "
            "the buffer was over half full")
        aggregated.add_metric([], events.aggregated)
        yield aggregated
        written = CounterMetricFamily("floodgate_events_written", "Events written to the store")
        written.add_metric([], events.written)
        yield written
        buffered = GaugeMetricFamily("floodgate_events_buffered",
                                     "Event rows waiting in memory for the store")
        buffered.add_metric([], events.rows_waiting())
        yield buffered
        hits = CounterMetricFamily("floodgate_cache_hits", "Verdict cache hits", labels=["cache"])
        misses = CounterMetricFamily("floodgate_cache_misses", "Verdict cache misses",
                                     labels=["cache"])
        for f in self.filters:
            cache = getattr(f, "cache", None)
            if cache is not None and hasattr(cache, "hits"):
                hits.add_metric([f.name], cache.hits)
                misses.add_metric([f.name], cache.misses)
        yield hits
        yield misses


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter("floodgate_smtp_decisions", "SMTP decisions",
                                 ["stage", "action", "reason"], registry=r)
        self.scan_seconds = Histogram("floodgate_scan_duration_seconds",
                                      "Time one filter took to check (DNSBL, virus, spam)",
                                      ["scanner"], buckets=SCAN_BUCKETS, registry=r)
        self.connections = Gauge("floodgate_smtp_connections", "Open SMTP connections",
                                 registry=r)
        self.spool = Gauge("floodgate_spool_messages", "Messages in the delivery queue",
                           registry=r)
        self.blocked = Gauge("floodgate_blocked_hosts", "Hosts and networks blocked now",
                             registry=r)
        self._server: Any = None
        self._collector: _RelayCollector | None = None
        self._decided: dict[tuple[str, str, str], Callable[[], None]] = {}

    def decision(self, stage: str, action: str, reason: str) -> None:
        """Count one SMTP decision. Called for every RCPT of a flood: each label set's
        counter is looked up once (prometheus_client's labels() takes a lock and checks
        its arguments every call)."""
        key = (stage, action, reason)
        inc = self._decided.get(key)
        if inc is None:
            inc = self._decided[key] = self.decisions.labels(*key).inc
        inc()

    def timed(self, filters: Iterable[Filter]) -> list[Filter]:
        """Time every check except the recipient lookup (a dict probe, nothing to see)."""
        return [f if f.name == "recipients" else TimedFilter(f, self.scan_seconds)
                for f in filters]

    def watch(self, relay: Watched, filters: Sequence[Filter]) -> None:
        """Gauges that read the relay's own state at scrape time."""
        self.connections.set_function(lambda: relay.handler.open_connections)
        self.spool.set_function(lambda: relay.delivery.queued)
        self.blocked.set_function(lambda: relay.gate.active_count(datetime.now(UTC)))
        self._collector = _RelayCollector(relay, filters)
        self.registry.register(self._collector)

    def rewatch(self, filters: Sequence[Filter]) -> None:
        """A reload built new filters: their caches are the ones to report."""
        if self._collector is not None:
            self._collector.filters = filters

    def serve(self, host: str, port: int) -> None:
        """Start the /metrics endpoint; OSError if the address cannot be bound."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
