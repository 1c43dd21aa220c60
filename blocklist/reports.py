"""Reports: who did what (per host), when (timeline) and the day at a glance (summary).

The queries read the rollups the event writer keeps (relay/store/rollups.py), so they cost
the same on ten million events as on ten thousand; only the part of the window before the
first whole bucket is counted from raw events, which keeps the answers exact. Turning rows
into reports and reports into CSV/JSON is pure, and tested on known data.
"""

from __future__ import annotations

import csv
import heapq
import io
import ipaddress
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, literal, select

from blocklist.blocks import utc
from blocklist.scoring import OBSERVE_SOURCE, BlockState
from relay.reasons import Reason
from relay.store.rollups import (
    DELIVERY,
    HOUR,
    MINUTE,
    HostRollup,
    HostTotal,
    TimelineRollup,
    floor,
)
from relay.store.tables import Event, events_counted

# Refusals worth a column of their own; any other refusal is "other".
REJECTS: tuple[str, ...] = tuple(r.value for r in (
    Reason.UNKNOWN_RCPT, Reason.TRAP, Reason.RELAY_DENIED, Reason.VIRUS, Reason.SPAM,
    Reason.DNSBL, Reason.BLOCKED, Reason.PROTOCOL))
# observed: a refusal observe mode ([policy]) recorded but did not make: its own series,
# never a refusal (the session went on) and never dropped (it is what the mode is for)
OUTCOMES = ("accepted", *REJECTS, "other", "tempfail", "observed")
# Greylisting's outcomes, counted on their own (a greylisted attempt is also a tempfail)
GREYLIST: tuple[str, ...] = (Reason.GREYLISTED.value, Reason.GREYLIST_PASSED.value)
HOST_FIELDS = ("host", "connections", "accepted", "rejected", *REJECTS, "other", "tempfail",
               "observed", *GREYLIST, "score", "blocked_until")

Row = tuple[Any, ...]  # (key columns..., count)


def outcome(stage: str, action: str, reason: str) -> str | None:
    """What an event means for the chart: a refusal by reason, a tempfail, an accepted
    message; None for steps that are not an outcome (connect, a known recipient) and for
    delivery, which is the next hop's business."""
    if stage == DELIVERY:
        return None
    if action == "observe":
        return "observed"
    if action == "tempfail":
        return "tempfail"
    if action == "reject":
        return reason if reason in REJECTS else "other"
    return "accepted" if reason == "accepted" else None


def ceil(ts: datetime, step: timedelta) -> datetime:
    start = floor(ts, step)
    return start if start == ts else start + step


def window_counts(conn: Connection, model: type[HostRollup] | type[TimelineRollup],
                  step: timedelta, cols: Sequence[str], since: datetime,
                  hosts: Sequence[str] | None = None) -> list[Row]:
    """Counts by `cols` for events at or after `since`: whole buckets from the rollup,
    the part of a bucket before them from the events table (a short indexed range)."""
    boundary = ceil(since, step)
    rolled = (select(*(getattr(model, c) for c in cols), func.sum(model.total))
              .where(model.bucket >= boundary).group_by(*(getattr(model, c) for c in cols)))
    raw = (select(*(getattr(Event, c) for c in cols), events_counted())
           .where(Event.ts >= since, Event.ts < boundary)
           .group_by(*(getattr(Event, c) for c in cols)))
    if hosts is not None:
        rolled = rolled.where(HostRollup.host.in_(hosts))
        raw = raw.where(Event.host.in_(hosts))
    return [tuple(r) for q in (rolled, raw) for r in conn.execute(q)]


# -- hosts -----------------------------------------------------------------------------


@dataclass(slots=True)
class HostReport:
    host: str
    connections: int = 0
    accepted: int = 0
    rejected: int = 0
    tempfail: int = 0
    observed: int = 0  # refusals observe mode ([policy]) recorded but did not make
    refused: Counter[str] = field(default_factory=Counter)  # rejections by reason
    seen: Counter[str] = field(default_factory=Counter)  # every event by reason
    score: float = 0.0
    blocked_until: datetime | None = None

    @property
    def other(self) -> int:
        return self.rejected - sum(self.refused[r] for r in REJECTS)

    def row(self) -> dict[str, Any]:
        """One flat record in HOST_FIELDS order (CSV, JSON)."""
        return {"host": self.host, "connections": self.connections, "accepted": self.accepted,
                "rejected": self.rejected, **{r: self.refused[r] for r in REJECTS},
                "other": self.other, "tempfail": self.tempfail, "observed": self.observed,
                **{r: self.seen[r] for r in GREYLIST}, "score": self.score,
                "blocked_until": self.blocked_until.isoformat() if self.blocked_until else None}


def aggregate_hosts(rows: Iterable[Row]) -> dict[str, HostReport]:
    """(host, stage, action, reason, count) rows into one report per host."""
    hosts: dict[str, HostReport] = {}
    for host, stage, action, reason, n in rows:
        if stage == DELIVERY:
            continue
        h = hosts.get(host)
        if h is None:
            h = hosts[host] = HostReport(host)
        n = int(n)
        h.seen[reason] += n
        if stage == "connect":
            h.connections += n
        if action == "reject":
            h.rejected += n
            h.refused[reason] += n
        elif action == "tempfail":
            h.tempfail += n
        elif action == "observe":
            h.observed += n
        elif reason == "accepted":
            h.accepted += n
    return hosts


def rank_hosts(hosts: Iterable[HostReport], top: int = 0,
               reason: str | None = None) -> list[HostReport]:
    """Most refused first; with `reason`, only hosts that have it, most of it first."""
    chosen = [h for h in hosts if reason is None or h.seen[reason] > 0]
    if reason is None:
        chosen.sort(key=lambda h: (-h.rejected, -h.tempfail, h.host))
    else:
        chosen.sort(key=lambda h: (-h.seen[reason], -h.rejected, h.host))
    return chosen[:top] if top > 0 else chosen


def score(report: HostReport, weights: dict[str, float]) -> float:
    """The host's score as `hosts show` computes it: weight times count, summed."""
    return sum(weights.get(r, 0.0) * n for r, n in report.seen.items())


def blocked_until(host: str, active: Sequence[BlockState]) -> datetime | None:
    """When the active block covering `host` (exactly, or a wider network) ends."""
    best: datetime | None = None
    try:
        net = ipaddress.ip_network(host, strict=False)
    except ValueError:
        net = None
    for b in active:
        covers = b.network == host
        if not covers and net is not None:
            bnet = ipaddress.ip_network(b.network, strict=False)
            covers = bnet.version == net.version and net.subnet_of(bnet)  # type: ignore[arg-type]
        if covers and (best is None or b.expires > best):
            best = b.expires
    return best


HOST_COLS = ("host", "stage", "action", "reason")


def top_hosts(conn: Connection, since: datetime, top: int, reason: str | None) -> list[str]:
    """The `top` hosts in rank_hosts order. The database sums per host (rollup and raw
    part apart: SQLite would copy a UNION before grouping it), Python merges and picks."""
    boundary = ceil(since, HOUR)
    keys: dict[str, list[int]] = {}
    parts: list[tuple[Any, Any, Any]] = [
        (Event, Event.count, and_(Event.ts >= since, Event.ts < boundary))]
    if reason is not None:  # per-reason counts: only the per-reason rollup has them
        parts.append((HostRollup, HostRollup.total, HostRollup.bucket >= boundary))
    statements = []
    for m, n, window in parts:

        def total(condition: Any, n: Any = n) -> Any:
            return func.sum(case((condition, n), else_=0))

        statements.append(
            select(m.host, total(m.action == "reject"), total(m.action == "tempfail"),
                   total(m.reason == (reason or "")))
            .where(window, m.stage != DELIVERY).group_by(m.host))
    if reason is None:  # one row per host-hour instead of one per host, hour and reason
        statements.append(select(HostTotal.host, func.sum(HostTotal.rejected),
                                 func.sum(HostTotal.tempfail), literal(0))
                          .where(HostTotal.bucket >= boundary).group_by(HostTotal.host))
    for stmt in statements:
        for host, rejected, tempfail, seen in conn.execute(stmt).all():  # fetchall: 1 call
            k = keys.setdefault(host, [0, 0, 0])
            k[0] += int(rejected)
            k[1] += int(tempfail)
            k[2] += int(seen)
    if reason is None:
        return heapq.nsmallest(top, keys, key=lambda h: (-keys[h][0], -keys[h][1], h))
    return heapq.nsmallest(top, (h for h, k in keys.items() if k[2] > 0),
                           key=lambda h: (-keys[h][2], -keys[h][0], h))


def hosts_report(engine: Engine, *, since: datetime, top: int, reason: str | None,
                 weights: dict[str, float], score_since: datetime,
                 active: Sequence[BlockState]) -> list[HostReport]:
    """The `report hosts` rows: counts since `since`, score over the scoring window."""
    enforced = [b for b in active if b.source != OBSERVE_SOURCE]  # observe: not blocked
    with engine.connect() as conn:
        chosen = top_hosts(conn, since, top, reason) if top > 0 else None
        if chosen == []:
            return []
        counts = window_counts(conn, HostRollup, HOUR, HOST_COLS, since, hosts=chosen)
        ranked = rank_hosts(aggregate_hosts(counts).values(), top, reason)
        scored = {h.host: h for h in ranked}
        if score_since != since and ranked:
            scored = aggregate_hosts(window_counts(conn, HostRollup, HOUR, HOST_COLS,
                                                   score_since, hosts=list(scored)))
    for h in ranked:
        other = scored.get(h.host)
        h.score = score(other, weights) if other is not None else 0.0
        h.blocked_until = blocked_until(h.host, enforced)
    return ranked


# -- timeline --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timeline:
    start: datetime
    end: datetime
    step: timedelta
    buckets: list[tuple[datetime, dict[str, int]]]

    def totals(self) -> dict[str, int]:
        return {o: sum(c[o] for _, c in self.buckets) for o in OUTCOMES}

    def rows(self) -> list[dict[str, Any]]:
        return [{"time": t.isoformat(), **c} for t, c in self.buckets]


def build_timeline(rows: Iterable[Row], start: datetime, end: datetime,
                   step: timedelta) -> Timeline:
    """(minute, stage, action, reason, count) rows into zero-filled buckets of `step`."""
    buckets: dict[datetime, dict[str, int]] = {}
    t = start
    while t < end:
        buckets[t] = dict.fromkeys(OUTCOMES, 0)
        t += step
    for minute, stage, action, reason, n in rows:
        kind = outcome(stage, action, reason)
        slot = buckets.get(floor(utc(minute), step))
        if kind is not None and slot is not None:
            slot[kind] += int(n)
    return Timeline(start, end, step, sorted(buckets.items()))


TIMELINE_COLS = ("bucket", "stage", "action", "reason")


def timeline_report(engine: Engine, *, since: datetime, now: datetime,
                    step: timedelta) -> Timeline:
    """Whole buckets from the one holding `since` to the one holding `now`."""
    start, end = floor(since, step), floor(now, step) + step
    stmt = (select(*(getattr(TimelineRollup, c) for c in TIMELINE_COLS), TimelineRollup.total)
            .where(TimelineRollup.bucket >= start, TimelineRollup.bucket < end))
    with engine.connect() as conn:
        return build_timeline(conn.execute(stmt), start, end, step)


# -- summary ---------------------------------------------------------------------------


@dataclass(slots=True)
class Summary:
    since: datetime
    now: datetime
    outcomes: dict[str, int]
    connections: int
    delivery: dict[str, int]
    viruses: list[tuple[str, int]]
    recipients: list[tuple[str, int]]
    dnsbl_zones: list[tuple[str, int]]
    blocked: list[BlockState]
    queued: int
    held: int
    greylist: dict[str, int] = field(default_factory=dict)  # GREYLIST reasons, counted

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(), "now": self.now.isoformat(),
            "outcomes": self.outcomes, "connections": self.connections,
            "delivery": self.delivery, "viruses": dict(self.viruses),
            "recipients": dict(self.recipients), "dnsbl_zones": dict(self.dnsbl_zones),
            "blocked": [{"network": b.network, "until": b.expires.isoformat(),
                         "level": b.level, "reason": b.reason} for b in self.blocked],
            "queued": self.queued, "held": self.held, "greylist": self.greylist,
        }


def totals(rows: Iterable[Row]) -> tuple[dict[str, int], int, dict[str, int]]:
    """(stage, action, reason, count) rows into outcomes, connections, delivery results."""
    outcomes = dict.fromkeys(OUTCOMES, 0)
    connections = 0
    delivery: Counter[str] = Counter()
    for stage, action, reason, n in rows:
        n = int(n)
        if stage == "connect" and action != "observe":  # observed: the same connection
            connections += n
        if stage == DELIVERY:
            delivery[reason] += n
        kind = outcome(stage, action, reason)
        if kind is not None:
            outcomes[kind] += n
    return outcomes, connections, {k: delivery[k] for k in ("delivered", "deferred", "bounced")}


def dnsbl_zones(rows: Iterable[tuple[str, int]]) -> Counter[str]:
    """Zones from DNSBL refusal details (`score=3 zen.example=127.0.0.2*2 ...`)."""
    zones: Counter[str] = Counter()
    for detail, n in rows:
        for token in (detail or "").split()[1:]:
            zone = token.partition("=")[0]
            if zone:
                zones[zone] += int(n)
    return zones


def _top(conn: Connection, column: Any, reasons: Sequence[str], since: datetime,
         limit: int, rows: bool = False) -> list[tuple[str, int]]:
    """The most frequent values of `column`; `rows`: count rows, not events (a row folded
    in a flood keeps one sample of its recipients: that one was seen at least once)."""
    n = (func.count() if rows else events_counted()).label("n")
    stmt = (select(column, n).where(Event.reason.in_(reasons), Event.ts >= since)
            .group_by(column).order_by(n.desc(), column).limit(limit))
    return [(str(k), int(v)) for k, v in conn.execute(stmt)]


def _top_first_word(conn: Connection, column: Any, reasons: Sequence[str], since: datetime,
                    limit: int) -> list[tuple[str, int]]:
    """_top of the values' first words: a virus event's detail is the signature, then the
    scanners' own verdicts for `floodgate trace` (a signature has no blank)."""
    counts: Counter[str] = Counter()
    for value, n in _top(conn, column, reasons, since, 1 << 30):
        counts[value.split(" ", 1)[0]] += n
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


def summary_report(engine: Engine, *, since: datetime, now: datetime, limit: int,
                   active: list[BlockState], queued: int, held: int) -> Summary:
    with engine.connect() as conn:
        rows = window_counts(conn, TimelineRollup, MINUTE, ("stage", "action", "reason"), since)
        outcomes, connections, delivery = totals(rows)
        greylist = dict.fromkeys(GREYLIST, 0)
        for _, _, reason, n in rows:
            if reason in greylist:
                greylist[reason] += int(n)
        viruses = _top_first_word(conn, Event.detail, ["virus"], since, limit)
        recipients = _top(conn, Event.recipient, ["unknown_rcpt", "trap"], since, limit,
                          rows=True)
        details = conn.execute(select(Event.detail, events_counted()).where(
            Event.reason == "dnsbl", Event.ts >= since).group_by(Event.detail)).all()
    zones = sorted(dnsbl_zones(details).items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return Summary(since, now, outcomes, connections, delivery, viruses, recipients, zones,
                   active, queued, held, greylist)


# -- formats ---------------------------------------------------------------------------


def to_csv(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else (f"{v:g}" if isinstance(v, float) else v)
                         for k, v in row.items()})
    return buf.getvalue()


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)


def since_now(seconds: float, now: datetime | None = None) -> tuple[datetime, datetime]:
    now = now or datetime.now(UTC)
    return now - timedelta(seconds=seconds), now


# -- mail authentication by From domain --------------------------------------------------

AUTH_REASONS: tuple[str, ...] = tuple(r.value for r in (
    Reason.SPF_FAIL, Reason.SPF_SOFTFAIL, Reason.DKIM_FAIL, Reason.DMARC_REJECT,
    Reason.DMARC_QUARANTINE))
AUTH_FIELDS = ("from_domain", *AUTH_REASONS, "total")


def auth_by_domain(engine: Engine, *, since: datetime, top: int) -> list[dict[str, Any]]:
    """Authentication findings per RFC 5322.From domain, most first. The domain is in each
    finding's detail (`from=example.com spf=fail ...`, relay/auth/check.py); the rollups
    keep no detail, so this reads the events (the findings only, by the reason index)."""
    counts: dict[str, Counter[str]] = {}
    with engine.connect() as conn:
        rows = conn.execute(select(Event.reason, Event.detail, Event.count)
                            .where(Event.ts >= since, Event.reason.in_(AUTH_REASONS)))
        for reason, detail, n in rows:
            first = (detail or "").split(" ", 1)[0]
            domain = first.removeprefix("from=") if first.startswith("from=") else "-"
            counts.setdefault(domain, Counter())[reason] += int(n or 1)
    out = [{"from_domain": d, **{r: c[r] for r in AUTH_REASONS}, "total": sum(c.values())}
           for d, c in counts.items()]
    out.sort(key=lambda r: (-r["total"], r["from_domain"]))
    return out[:top] if top > 0 else out
