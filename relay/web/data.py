"""What the API reads and writes, over the same store functions the CLI uses.

Plain functions of (config, engine): the routes stay thin, and each answer carries the same
numbers as `hosts show`, `block list`, `report ...` and `queue list`.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, select

from blocklist import blocks
from blocklist import reports as rp
from blocklist.hosts import host_key
from blocklist.scoring import BlockState, Protection, score_hosts
from filters.address import normalise_domain
from relay.config import Config
from relay.delivery import queue_admin as q
from relay.delivery.spool import Spool
from relay.store.tables import Block, Event
from relay.store.web_tables import AuditEntry


def iso(dt: datetime | None) -> str | None:
    return blocks.utc(dt).isoformat() if dt is not None else None


def protection(config: Config, engine: Engine) -> Protection:
    """Never-block rules as `block add` applies them: config + store allowlist, own
    addresses, loopback."""
    own = [h for h, _ in config.relay.endpoints()]
    base = Protection.build(config.blocklist.allow, own, config.blocklist.protect_loopback)
    return base.with_allow(n for n, _, _ in blocks.allow_list(engine))


def block_view(b: BlockState, now: datetime) -> dict[str, Any]:
    return {"network": b.network, "reason": b.reason, "source": b.source, "level": b.level,
            "score": b.score, "first_seen": iso(b.first_seen), "last_seen": iso(b.last_seen),
            "expires": iso(b.expires),
            "seconds_left": max(0, int((b.expires - now).total_seconds()))}


# -- audit -------------------------------------------------------------------------------


def audit(engine: Engine, who: str, action: str, target: str, detail: str = "") -> None:
    with engine.begin() as conn:
        conn.execute(insert(AuditEntry).values(ts=datetime.now(UTC), who=who[:80],
                                               action=action, target=target[:64],
                                               detail=detail[:2000]))


def audit_list(engine: Engine, limit: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
        return [{"id": r.id, "ts": iso(r.ts), "who": r.who, "action": r.action,
                 "target": r.target, "detail": r.detail} for r in rows]


# -- hosts -------------------------------------------------------------------------------


def host_detail(config: Config, engine: Engine, address: str, recent: int) -> dict[str, Any]:
    """`hosts show` as data: the score, the events that made it, and the block state."""
    key = host_key(address, config.store.ipv6_prefix)
    now = datetime.now(UTC)
    weights = config.scoring.all_weights()
    since = now - timedelta(seconds=config.scoring.window)
    rows = blocks.host_events(engine, key, since)
    scored = score_hosts(rows, weights).get(key)
    score = scored.score if scored else 0.0
    reasons = [{"reason": r.reason, "weight": weights.get(r.reason, 0.0), "count": r.count,
                "points": weights.get(r.reason, 0.0) * r.count, "first": iso(r.first),
                "last": iso(r.last)} for r in sorted(rows, key=lambda r: (-r.count, r.reason))]
    with engine.connect() as conn:
        events = conn.execute(
            select(Event.ts, Event.stage, Event.action, Event.reason, Event.code,
                   Event.count, Event.recipient, Event.detail)
            .where(Event.host == key).order_by(Event.ts.desc()).limit(recent)).all()
        row = conn.execute(select(Block.__table__).where(Block.network == key)).first()
    existing = None if row is None else BlockState(
        row.network, blocks.utc(row.first_seen), blocks.utc(row.last_seen),
        blocks.utc(row.expires), row.level, row.source, row.score, row.reason)
    state, why = _state(config, engine, key, existing, score, now)
    return {
        "address": address, "host": key, "score": score,
        "threshold": config.scoring.threshold, "window_seconds": config.scoring.window,
        "reasons": reasons, "state": state, "why": why,
        "block": block_view(existing, now) if existing is not None else None,
        "events": [{"ts": iso(ts), "stage": st, "action": ac, "reason": re, "code": co,
                    "count": n, "recipient": rc, "detail": de}
                   for ts, st, ac, re, co, n, rc, de in events],
    }


def _state(config: Config, engine: Engine, key: str, existing: BlockState | None,
           score: float, now: datetime) -> tuple[str, str]:
    """(state, why): never | blocked | expired | pending | clear, in `hosts show` words."""
    never = protection(config, engine).why(key)
    if never:
        return "never", f"never blocked: {never}"
    if existing is not None and existing.expires > now:
        return "blocked", (f"blocked until {existing.expires:%Y-%m-%d %H:%M:%S} UTC, level "
                           f"{existing.level}, {existing.source}: {existing.reason}")
    wider = rp.blocked_until(key, blocks.active_blocks(engine, now))
    if wider is not None:
        return "blocked", f"inside a blocked network until {wider:%Y-%m-%d %H:%M:%S} UTC"
    if existing is not None:
        return "expired", (f"not blocked: the last block (level {existing.level}) ended "
                           f"{existing.expires:%Y-%m-%d %H:%M:%S} UTC; offences before it "
                           "do not count again")
    if score >= config.scoring.threshold:
        return "pending", "not blocked yet: at the threshold, the next scoring run blocks it"
    return "clear", "not blocked: score below the threshold"


# -- queue -------------------------------------------------------------------------------


EXAMINED = 2_000  # messages read in detail: a spool of 100k must not cost a refresh 100k reads


def queue_counts(config: Config) -> tuple[int, int]:
    """(queued, held) from directory listings alone, as `report summary` counts them."""
    spool = Spool(config.relay.spool_dir)
    if not spool.queue.is_dir():
        return 0, 0
    return len(spool.ids()), len(spool.held())


def queue_summary(config: Config, limit: int) -> dict[str, Any]:
    """Counts over the whole spool; attempts, recipients and destinations over the oldest
    EXAMINED messages (`examined` says how many); the oldest `limit` in detail."""
    spool = Spool(config.relay.spool_dir)
    ids: list[str] = []
    messages: list[q.QueuedMessage] = []
    if spool.queue.is_dir():
        ids = spool.ids()
        for queue_id in ids[:EXAMINED]:
            with contextlib.suppress(OSError, ValueError):
                messages.append(q.load(spool, queue_id))
    hops: Counter[str] = Counter()
    for m in messages:
        for r in m.pending:
            hops[m.state.recipients[r].hop or normalise_domain(r.rpartition("@")[2])] += 1
    now = time.time()
    oldest = min((m.envelope.received for m in messages), default=None)
    return {
        "queued": len(ids), "held": len(spool.held()), "examined": len(messages),
        "deferred": sum(1 for m in messages if m.state.attempts > 0),
        "recipients": sum(len(m.pending) for m in messages),
        "oldest_seconds": int(now - oldest) if oldest else None,
        "by_destination": dict(hops.most_common(20)),
        "messages": [{"queue_id": m.queue_id, "sender": m.envelope.mail_from,
                      "size": m.envelope.size, "age_seconds": int(now - m.envelope.received),
                      "held": m.held, "attempts": m.state.attempts, "pending": m.pending,
                      "next_attempt": m.state.next_attempt or None,
                      "last_reply": m.last_reply()} for m in messages[:limit]],
    }
