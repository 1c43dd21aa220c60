"""The units of delivery work, plain data shared by the scheduler, the client and the outcomes:
a message's progress in memory (Entry), its recipients for one destination (Unit), the units
waiting for a destination (Destination) and one recipient's outcome (Result)."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

from relay.delivery import dsn
from relay.delivery.spool import Envelope, MessageState


@dataclass(frozen=True, slots=True)
class Result:
    status: str  # DELIVERED, PENDING (deferred) or BOUNCED
    reply: str
    hop: str = ""


@dataclass(slots=True)
class Entry:
    envelope: Envelope
    state: MessageState
    inflight: int = 0
    due: float = 0.0
    finalizing: bool = False
    failures: list[dsn.Failure] = field(default_factory=list)


@dataclass(slots=True)
class Unit:
    """The recipients of one message that go to one destination."""

    entry: Entry
    recipients: list[str]


@dataclass(slots=True)
class Destination:
    hop: str  # "host:port" or "mx:domain"
    pending: collections.deque[Unit] = field(default_factory=collections.deque)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    dead_until: float = 0.0
    dead_reason: str = ""
