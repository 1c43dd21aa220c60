"""What the API answers, over the same functions the CLI uses.

Host operations are blocklist.operations' (the CLI calls them too); this renders them as
JSON, and reads the queue. The routes stay thin, and each answer carries the same numbers
as `hosts show`, `block list`, `report ...` and `queue list`.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from datetime import datetime
from typing import Any

from blocklist import blocks
from blocklist import operations as ops
from blocklist.scoring import BlockState
from filters.address import normalise_domain
from relay.config import Config
from relay.delivery import queue_admin as q
from relay.delivery.spool import Spool


def iso(dt: datetime | None) -> str | None:
    return blocks.utc(dt).isoformat() if dt is not None else None


def block_view(b: BlockState, now: datetime) -> dict[str, Any]:
    return {"network": b.network, "reason": b.reason, "source": b.source, "level": b.level,
            "score": b.score, "first_seen": iso(b.first_seen), "last_seen": iso(b.last_seen),
            "expires": iso(b.expires),
            "seconds_left": max(0, int((b.expires - now).total_seconds()))}


# -- audit and hosts: blocklist.operations computes, these render ----------------------


def audit_view(a: ops.Audited) -> dict[str, Any]:
    return {"id": a.id, "ts": iso(a.ts), "who": a.who, "action": a.action,
            "target": a.target, "detail": a.detail}


def host_view(v: ops.HostView, now: datetime) -> dict[str, Any]:
    """`hosts show` as data."""
    return {
        "address": v.address, "host": v.host, "score": v.score, "threshold": v.threshold,
        "window_seconds": v.window,
        "reasons": [{"reason": r.reason, "weight": r.weight, "count": r.count,
                     "points": r.points, "first": iso(r.first), "last": iso(r.last)}
                    for r in v.reasons],
        "state": v.state, "why": v.why,
        "block": block_view(v.block, now) if v.block is not None else None,
        "events": [{"ts": iso(e.ts), "stage": e.stage, "action": e.action, "reason": e.reason,
                    "code": e.code, "count": e.count, "recipient": e.recipient,
                    "detail": e.detail} for e in v.events],
    }


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
