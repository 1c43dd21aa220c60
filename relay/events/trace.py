"""The whole story of a session and its messages, from the events: what `floodgate trace`
prints and `GET /api/trace` returns (both only render this).

A search (reference, sender, recipient, client, Message-ID) finds events; their sessions
are then read whole, in order, and each accepted message's later events (delivery attempts
with the next hop's reply, a bounce) are added by its queue id. A reference is a session id
(the `[ref ...]` of a reply) or a queue id (`queued as ...`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, and_, func, or_, select, text

from relay.events.record import bounded_message_id
from relay.store.tables import Event

EVENTS = Event.__table__
MAX_SESSIONS = 50  # a search matching more shows the newest; the rest are counted
_DSN = re.compile(r"\bdsn=([0-9A-Fa-f]+)$")
_VERDICT = re.compile(r"(?:^| )([a-z_]+)=(\S+)\((scanned|cached|unscanned|looked_up)\)(?= |$)")


@dataclass(frozen=True, slots=True)
class Query:
    """What to look for; every field given must match (None: any)."""

    ref: str | None = None
    sender: str | None = None
    recipient: str | None = None
    client: str | None = None
    message_id: str | None = None
    since: datetime | None = None  # events at or after
    host: str | None = None  # the client's host key (blocklist/hosts.py), the front end's

    def empty(self) -> bool:
        return not any((self.ref, self.sender, self.recipient, self.client, self.message_id))


@dataclass(slots=True)
class Step:
    """One event of the story."""

    ts: datetime
    stage: str
    action: str
    reason: str
    code: int
    recipient: str
    detail: str
    queue_id: str
    message_id: str
    size: int | None
    count: int  # more than 1: a flood folded into this row (relay/events/writer.py)
    # each filter's own verdict, from the detail's `name=value(source)` words
    # (filters/base.py Context.notes): [{"filter", "verdict", "source"}]
    verdicts: list[dict[str, str]] = field(default_factory=list)
    # a folded row: the other sessions it stands for (the story's is the first), and
    # whether it stood for more than it names
    folded: list[str] = field(default_factory=list)
    folded_more: bool = False


@dataclass(slots=True)
class Story:
    """One SMTP session (or, for a queue id seen without its session, one message)."""

    session: str
    node: str
    client: str
    helo: str
    sender: str
    steps: list[Step] = field(default_factory=list)

    @property
    def queue_ids(self) -> list[str]:
        return list(dict.fromkeys(s.queue_id for s in self.steps if s.queue_id))


@dataclass(slots=True)
class Trace:
    stories: list[Story]
    more: int  # sessions matched but not shown (past MAX_SESSIONS)


def normalise_message_id(value: str) -> str:
    """A Message-ID as an operator pastes it, with or without angle brackets, whole or as
    trace showed it, as the relay stores it (as the header field has it: with them, then
    bounded: relay/events/record.py)."""
    value = value.strip()
    return bounded_message_id(value if not value or value.startswith("<") else f"<{value}>")


# The partial indexes' own conditions, as literal SQL: a planner uses a partial index only
# for a query that says its condition, and SQLite matches it only word for word (a bound
# `!= ?` is not `!= ''`): relay/store/tables.py Event.__table_args__.
_HAS = {c: text(f"{c} != ''") for c in ("queue_id", "message_id", "sender", "recipient",
                                           "folded")}


def _address(column: Any, name: str, value: str) -> Any:
    value = value.strip("<>").lower()
    match = func.lower(column) == value
    return and_(match, _HAS[name]) if value else match  # the null sender: no index


def _conditions(q: Query) -> list[Any]:
    where: list[Any] = []
    if q.ref:
        where.append(or_(Event.session == q.ref, and_(Event.queue_id == q.ref, _HAS["queue_id"])))
    if q.sender is not None:
        where.append(_address(Event.sender, "sender", q.sender))
    if q.recipient is not None:
        where.append(_address(Event.recipient, "recipient", q.recipient))
    if q.client:
        where.append(Event.client == q.client)
        if q.host:  # the (host, ts) index: the client's host key (an IPv6 client's prefix)
            where.append(Event.host == q.host)
    if q.message_id:
        where.append(and_(Event.message_id == normalise_message_id(q.message_id),
                          _HAS["message_id"]))
    if q.since is not None:
        where.append(Event.ts >= q.since)
    return where


def find(engine: Engine, q: Query) -> Trace:
    """The stories of the sessions (and messages) matching `q`, oldest first."""
    if q.empty():
        raise ValueError("give a reference or at least one of sender, recipient, client, "
                         "Message-ID")
    if any("\x00" in v for v in (q.ref, q.sender, q.recipient, q.client, q.message_id)
           if v):
        return Trace([], 0)  # events hold client text escaped: no NUL (PostgreSQL refuses it)
    with engine.connect() as conn:
        seeds = conn.execute(
            select(Event.session, Event.queue_id, func.max(Event.ts).label("last"))
            .where(*_conditions(q)).group_by(Event.session, Event.queue_id)
            .order_by(func.max(Event.ts).desc())
        ).all()
        if q.ref:  # a session folded into another's row in a flood (writer.py _merge)
            seeds += conn.execute(
                select(Event.session, Event.queue_id, Event.ts)
                .where(_HAS["folded"], Event.folded.contains(q.ref, autoescape=True),
                       *_conditions(dataclasses.replace(q, ref=None)))).all()
            seeds.sort(key=lambda s: s[2], reverse=True)
        sessions = list(dict.fromkeys(s for s, _, _ in seeds if s))
        more = max(0, len(sessions) - MAX_SESSIONS)
        sessions = sessions[:MAX_SESSIONS]
        queue_ids = {qid for s, qid, _ in seeds if qid and (not s or s in sessions)}
        rows: list[Row[Any]] = []
        if sessions:
            rows += conn.execute(select(EVENTS).where(Event.session.in_(sessions))).all()
        queue_ids |= {r.queue_id for r in rows if r.queue_id}
        seen = {r.id for r in rows}
        asked: set[str] = set()
        while queue_ids - asked:  # the messages, then the DSNs their bounces sent
            ask = sorted(queue_ids - asked)
            asked |= queue_ids
            new = [r for r in conn.execute(
                select(EVENTS).where(Event.queue_id.in_(ask), _HAS["queue_id"])).all()
                if r.id not in seen]
            seen |= {r.id for r in new}
            rows += new
            queue_ids |= {d for r in new for d in _dsn_ids(r)}
    rows.sort(key=lambda r: (r.ts, r.id))
    return Trace(_stories(rows), more)


def verdicts(detail: str) -> list[dict[str, str]]:
    """The filters' verdicts an event's detail carries, in the order they ran."""
    if "(" not in detail:
        return []
    return [{"filter": f, "verdict": v, "source": src}
            for f, v, src in _VERDICT.findall(detail)]


def _dsn_ids(row: Row[Any]) -> list[str]:
    """The DSN a bounce event says was sent (relay/delivery/outcomes.py: `dsn=ID`)."""
    return _DSN.findall(row.detail) if row.reason == "bounced" else []


def _stories(rows: list[Row[Any]]) -> list[Story]:
    """Rows (in order) into one story per session; an event of a message (delivery) joins
    the story of the session that queued it, or one of its own."""
    stories: dict[str, Story] = {}
    owner: dict[str, str] = {}  # queue id -> the key of the story that queued it
    for r in rows:
        key = r.session or owner.get(r.queue_id) or f"queue:{r.queue_id}"
        story = stories.get(key)
        if story is None:
            story = stories[key] = Story(r.session, r.node, r.client, r.helo, r.sender)
        if r.queue_id:
            owner.setdefault(r.queue_id, key)
        for dsn_id in _dsn_ids(r):  # the DSN's delivery is part of the story
            owner.setdefault(dsn_id, key)
        story.helo = story.helo or r.helo
        story.sender = story.sender or r.sender
        story.steps.append(Step(
            ts=r.ts, stage=r.stage, action=r.action, reason=r.reason, code=r.code,
            recipient=r.recipient, detail=r.detail, queue_id=r.queue_id,
            message_id=r.message_id, size=r.size, count=r.count, verdicts=verdicts(r.detail),
            folded=[f for f in r.folded.split() if f != "+"],
            folded_more=r.folded.endswith("+")))
    return list(stories.values())


def as_data(trace: Trace) -> dict[str, Any]:
    """The trace as JSON-ready data: `floodgate trace --format json` and `/api/trace`."""
    def step(s: Step) -> dict[str, Any]:
        d = asdict(s)
        d["ts"] = s.ts.isoformat()
        return d

    return {"sessions": [{"session": st.session, "node": st.node, "client": st.client,
                          "helo": st.helo, "sender": st.sender, "queue_ids": st.queue_ids,
                          "events": [step(s) for s in st.steps]} for st in trace.stories],
            "more": trace.more}


def since(seconds: float | None) -> datetime | None:
    """The start of a window `seconds` long ending now (None: no start)."""
    return None if seconds is None else datetime.now(UTC) - timedelta(seconds=seconds)
