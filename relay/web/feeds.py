"""Blocklist feeds for firewalls: `/blocklist.txt|nft|json`, cheap to poll.

A poll costs one read of the blocks generation counter: while it and the earliest expiry
are unchanged, the last snapshot stands and its ETag answers `If-None-Match` with a 304.
The ETag is the content fingerprint (blocks, expiries, protected networks), so two web
processes on one store give the same ETag for the same list.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from sqlalchemy import Engine

from blocklist import active
from blocklist.active import settings, snapshot
from blocklist.blocks import GENERATION_KEY
from blocklist.export import Entry, render
from relay.config import Config
from relay.store.database import read_generation

MEDIA = {"plain": "text/plain; charset=utf-8", "nft": "text/plain; charset=utf-8",
         "json": "application/json"}


@dataclass(slots=True)
class Snapshot:
    generation: int
    valid_until: datetime  # the earliest expiry: the list changes then without a write
    fingerprint: str
    modified: datetime
    entries: list[Entry]
    protect: list[str]
    rendered: dict[str, bytes] = field(default_factory=dict)


class FeedCache:
    """The current snapshot; rebuilt when the generation moves or a block runs out."""

    def __init__(self, config: Config, engine: Engine):
        self.config = config
        self.engine = engine
        self.lock = threading.Lock()
        self.current: Snapshot | None = None

    def get(self) -> Snapshot:
        generation = read_generation(self.engine, GENERATION_KEY)
        now = datetime.now(UTC)
        with self.lock:
            cur = self.current
            if cur is not None and cur.generation == generation and now < cur.valid_until:
                return cur
            entries, protect = snapshot(self.config, self.engine, now)
            mark = active.fingerprint(entries, protect)
            modified = now.replace(microsecond=0)
            if cur is not None and cur.fingerprint == mark:
                modified = cur.modified  # a write that changed nothing exported
            until = min((e.expires for e in entries), default=datetime.max.replace(tzinfo=UTC))
            self.current = Snapshot(generation, until, mark, modified, entries, protect)
            return self.current

    def body(self, snap: Snapshot, fmt: str) -> bytes:
        with self.lock:
            data = snap.rendered.get(fmt)
            if data is None:
                now = datetime.now(UTC)
                data = render(fmt, snap.entries, snap.protect, settings(self.config, now)) \
                    .parts[""]
                if fmt != "nft":  # nft carries remaining times: render it fresh each time
                    snap.rendered[fmt] = data
            return data


def etag(snap: Snapshot, fmt: str) -> str:
    return f'"{fmt}-{snap.fingerprint[:32]}"'


def last_modified(snap: Snapshot) -> str:
    return format_datetime(snap.modified, usegmt=True)


def not_modified(snap: Snapshot, fmt: str, if_none_match: str | None,
                 if_modified_since: str | None) -> bool:
    """RFC 9110: If-None-Match wins; If-Modified-Since only when it is absent."""
    if if_none_match is not None:
        tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
        return "*" in tags or etag(snap, fmt) in tags
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            return False
        return snap.modified <= since
    return False
