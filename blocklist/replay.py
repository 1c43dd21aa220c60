"""Replay: the blocks a scoring policy would have made over the recorded events, before an
operator puts it in force.

Pure over rows and settings, like blocklist/scoring.py: the events come in time order and
each is judged the moment it is recorded, as the running tally does (relay/hosts/tally.py),
so a block starts at the event that crosses the threshold, not at the next periodic run.
The rules are the scorer's:

- a host's score is the sum of its weighted events over the last `window`, the `accepted`
  bonus stopping at `floor`; accepted mail from the null sender earns nothing;
- offences before a block's end are paid for by it: while a host (or its /24) is blocked,
  its offences only extend the block, and after the block it starts again from nothing;
- a `blocked` refusal is an offence only while the block that refused it is in force in
  the replay too (under a policy that never blocked the host, the refusal never happened);
- a host coming back within `recidive_window` of its last block's end gets the next level;
- a /24 is blocked when its hosts that are not blocked themselves reach
  `network_threshold` together;
- protected networks (blocklist/protection.py) are scored, never blocked.

Blocks made by hand (`source` other than auto) are facts, not policy: they come into force
when they were made, whatever is replayed. So are an operator's unblocks (`floodgate block
remove`, from the audit log): one ends the block in force on its network then, replayed or
not, as `blocks.remove` does (level 0: not held against the host), and the block says who
ended it and when, so a block an operator lifted is never shown as simply "would be blocked".
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from blocklist.scoring import BlockState, network_key


@dataclass(frozen=True, slots=True)
class EventRow:
    """One recorded event as the replay needs it; `count` events when a flood folded them."""

    ts: datetime
    host: str
    reason: str
    count: int = 1
    sender: bool = True  # a non-null sender (the null sender's accepted mail earns nothing)
    detail: str = ""  # for `blocked`: the network of the block that refused it


@dataclass(frozen=True, slots=True)
class Policy:
    """The scoring settings a replay judges by."""

    weights: dict[str, float]
    threshold: float
    network_threshold: float
    window: float
    duration: Callable[[int], float]
    recidive_window: float
    protected: Callable[[str], str | None]
    floor: float = -math.inf


@dataclass(frozen=True, slots=True)
class Actual:
    """A block the scorer really made: the store's row, started at `created`."""

    network: str
    created: datetime
    score: float
    level: int
    reason: str
    source: str = "auto"


@dataclass(slots=True)
class ReplayBlock:
    """A block the policy makes: from `start` (the crossing event) until `expires`, which
    later offences push back."""

    network: str
    kind: str  # "host" or "network"
    start: datetime
    score: float
    offences: int
    reason: str
    first_seen: datetime
    level: int
    expires: datetime
    source: str = "auto"
    unblocked: Unblock | None = None  # an operator ended it (`expires` is then that time)

    def as_dict(self) -> dict[str, object]:
        return {"network": self.network, "kind": self.kind, "start": self.start.isoformat(),
                "score": self.score, "offences": self.offences, "reason": self.reason,
                "first_offence": self.first_seen.isoformat(), "level": self.level,
                "until": self.expires.isoformat(),
                "unblocked": None if self.unblocked is None else
                {"at": self.unblocked.ts.isoformat(), "by": self.unblocked.who}}


@dataclass(frozen=True, slots=True)
class Unblock:
    """An operator's `block remove` (the audit log's `unblock` entry)."""

    ts: datetime
    network: str
    who: str


@dataclass(slots=True)
class _Offences:
    """One host's weighted events since its last block, oldest first."""

    entries: deque[tuple[datetime, str, int, float]] = field(default_factory=deque)
    positive: float = 0.0
    negative: float = 0.0

    def add(self, ts: datetime, reason: str, count: int, weight: float) -> None:
        self.entries.append((ts, reason, count, weight))
        if weight > 0:
            self.positive += weight * count
        else:
            self.negative += weight * count

    def expire(self, before: datetime) -> None:
        """Forget events older than the window (the scorer reads `ts >= now - window`)."""
        while self.entries and self.entries[0][0] < before:
            _, _, count, weight = self.entries.popleft()
            if weight > 0:
                self.positive -= weight * count
            else:
                self.negative -= weight * count
        if not self.entries:
            self.positive = self.negative = 0.0

    def score(self, floor: float) -> float:
        return self.positive + max(self.negative, floor)

    def offences(self) -> tuple[int, dict[str, int], datetime | None]:
        """Positive events: how many, per reason, and the first one's time."""
        counts: dict[str, int] = {}
        first = None
        for ts, reason, count, weight in self.entries:
            if weight > 0:
                counts[reason] = counts.get(reason, 0) + count
                first = first or ts
        return sum(counts.values()), counts, first


def summary(counts: dict[str, int], weights: dict[str, float]) -> str:
    """`unknown_rcpt=20 virus=1`, heaviest first, as blocklist.scoring.HostScore.summary."""
    parts = sorted(((n * weights.get(r, 0), r, n) for r, n in counts.items()), reverse=True)
    return " ".join(f"{r}={n}" for _, r, n in parts)


class Replay:
    """Walks events in time order and keeps the blocks the policy makes."""

    def __init__(self, policy: Policy, history: Iterable[BlockState] = (),
                 given: Iterable[BlockState] = (), unblocks: Iterable[Unblock] = ()):
        """`history`: blocks ended before the first event (escalation counts them);
        `given`: blocks the policy does not decide (manual ones, and those in force when
        the replay starts), in force from their `first_seen`; `unblocks`: the operator's,
        each ending the block in force on its network at its time."""
        self._unblocks = sorted(unblocks, key=lambda u: u.ts)
        self.policy = policy
        self.blocks: dict[str, ReplayBlock] = {}  # the latest per network, as the table
        self.made: list[ReplayBlock] = []
        self.hosts: dict[str, _Offences] = {}
        self.members: dict[str, set[str]] = {}
        for b in history:
            self.blocks[b.network] = self._given(b)
        self._pending = sorted((self._given(b) for b in given), key=lambda b: b.start)

    @staticmethod
    def _given(b: BlockState) -> ReplayBlock:
        return ReplayBlock(b.network, "network" if "/" in b.network else "host", b.first_seen,
                           b.score, 0, b.reason, b.first_seen, b.level, b.expires, b.source)

    def run(self, events: Iterable[EventRow], until: datetime | None = None
            ) -> list[ReplayBlock]:
        """The blocks made; `until` (now): the unblocks after the last event apply too."""
        for event in events:
            self.add(event)
        if until is not None:
            self._catch_up(until)
        return self.made

    def _catch_up(self, now: datetime) -> None:
        """Given blocks come into force, and unblocks end blocks, up to `now`, in order."""
        while True:
            given = self._pending[0].start if self._pending else None
            lifted = self._unblocks[0].ts if self._unblocks else None
            if given is not None and given <= now and (lifted is None or given <= lifted):
                block = self._pending.pop(0)
                self.blocks[block.network] = block
            elif lifted is not None and lifted <= now:
                self._unblock(self._unblocks.pop(0))
            else:
                return

    def _unblock(self, u: Unblock) -> None:
        block = self._active(u.network, u.ts)
        if block is not None:
            block.expires, block.level, block.unblocked = u.ts, 0, u

    def _active(self, network: str | None, now: datetime) -> ReplayBlock | None:
        block = self.blocks.get(network) if network else None
        return block if block is not None and block.expires > now else None

    def add(self, event: EventRow) -> None:
        p, now = self.policy, event.ts
        self._catch_up(now)
        weight = p.weights.get(event.reason, 0.0)
        if not weight or (event.reason == "accepted" and not event.sender):
            return
        if event.reason == "blocked" and self._active(event.detail, now) is None:
            return  # refused by a block this policy never made (or one since ended)
        host, net = event.host, network_key(event.host)
        paying = self._active(host, now) or self._active(net, now)
        if paying is not None:
            if weight > 0:  # knocking while blocked extends the block
                paying.expires = max(paying.expires,
                                     now + timedelta(seconds=p.duration(paying.level)))
            return
        offences = self.hosts.setdefault(host, _Offences())
        offences.expire(now - timedelta(seconds=p.window))
        offences.add(now, event.reason, event.count, weight)
        if weight <= 0:
            return
        if offences.score(p.floor) >= p.threshold and not p.protected(host):
            self._block(host, "host", offences.score(p.floor), [offences], now)
            return
        if net is None or not p.network_threshold:
            return
        self.members.setdefault(net, set()).add(host)
        if self._active(net, now) is not None or p.protected(net):
            return
        scored = []
        for member in self.members[net]:
            if self._active(member, now) is not None:
                continue
            o = self.hosts[member]
            o.expire(now - timedelta(seconds=p.window))
            if o.score(p.floor) > 0:
                scored.append(o)
        total = sum(o.score(p.floor) for o in scored)
        if total >= p.network_threshold:
            self._block(net, "network", total, scored, now)

    def _block(self, network: str, kind: str, score: float, paid: list[_Offences],
               now: datetime) -> None:
        """Block `network` from `now`; the offences that made it are paid for."""
        p = self.policy
        counts: dict[str, int] = {}
        firsts = []
        for o in paid:
            _, theirs, first = o.offences()
            for reason, n in theirs.items():
                counts[reason] = counts.get(reason, 0) + n
            if first is not None:
                firsts.append(first)
        # a /24's block pays for every offence of its hosts until now
        members = self.members.get(network, ()) if kind == "network" else ()
        for o in [*paid, *(self.hosts[m] for m in members if m in self.hosts)]:
            o.entries.clear()
            o.positive = o.negative = 0.0
        previous = self.blocks.get(network)
        level = 1
        if previous is not None and (now - previous.expires).total_seconds() <= \
                p.recidive_window:
            level = previous.level + 1
        block = ReplayBlock(network, kind, now, score, sum(counts.values()),
                            summary(counts, p.weights), min(firsts, default=now), level,
                            now + timedelta(seconds=p.duration(level)))
        self.blocks[network] = block
        self.made.append(block)


@dataclass(frozen=True, slots=True)
class Comparison:
    """The replay against what the scorer did since `since`."""

    blocked: list[tuple[ReplayBlock, bool]]  # each replayed block; True: it was blocked too
    not_blocked: list[Actual]  # real blocks the policy would not have made


def compare(made: Iterable[ReplayBlock], actual: Iterable[Actual],
            since: datetime) -> Comparison:
    """Blocks started at or after `since`, matched by network (the store keeps one row per
    network: its latest block)."""
    real = {a.network: a for a in actual if a.source == "auto" and a.created >= since}
    mine = [b for b in made if b.start >= since]
    networks = {b.network for b in mine}
    return Comparison([(b, b.network in real) for b in mine],
                      sorted((a for n, a in real.items() if n not in networks),
                             key=lambda a: a.created))


def split_history(rows: Iterable[tuple[BlockState, datetime]], start: datetime,
                  duration: Callable[[int], float]
                  ) -> tuple[list[BlockState], list[BlockState]]:
    """The store's blocks as a replay from `start` takes them: automatic blocks ended
    before `start` are history (escalation); manual blocks, and automatic ones made before
    `start` and still in force then, are given. An automatic block's row holds its expiry
    after every extension, which the replay works out again: it is given only as long as
    it was made for (`created` + its level's duration). Automatic blocks made after `start`
    are what the replay decides for itself."""
    history, given = [], []
    for state, created in rows:
        if state.source != "auto":
            given.append(state)
        elif state.expires <= start:
            history.append(state)
        elif created < start:
            until = min(state.expires, created + timedelta(seconds=duration(state.level)))
            given.append(BlockState(state.network, state.first_seen, state.last_seen,
                                    max(until, start), state.level, state.source,
                                    state.score, state.reason))
    return history, given
