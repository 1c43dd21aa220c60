"""A running score of the offences this relay records, per host and per IPv4 /24.

The scorer reads the store every `scoring.interval`; a dictionary attack learns a whole
directory well inside that. So each offence this process records also goes into a tally
here, and the moment a host (or its /24) reaches its threshold the scorer judges it at
once from these tallies (relay/hosts/scorer.py run_hosts) and the gate refuses its next
connection. The tally only triggers: blocks are decided by the same rules as the periodic
run, which still sees what other relays and processes recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from blocklist.scoring import BlockDecision, BlockState, Offences, network_key
from relay.config.scoring import ScoringConfig
from relay.events.record import EventRecord
from relay.logs import kv
from relay.store.database import describe

log = logging.getLogger("floodgate.scoring")

ScoreNow = Callable[[list["Tally"]],
                    Awaitable[tuple[list[BlockDecision], list[BlockState], set[str]]]]


@dataclass(slots=True)
class Tally:
    """What one host did since `started`, per reason: [count, first, last]."""

    host: str
    started: datetime
    reasons: dict[str, list] = field(default_factory=dict)  # type: ignore[type-arg]
    positive: float = 0.0
    negative: float = 0.0

    def add(self, reason: str, weight: float, ts: datetime) -> None:
        seen = self.reasons.get(reason)
        if seen is None:
            self.reasons[reason] = [1, ts, ts]
        else:
            seen[0] += 1
            seen[2] = ts
        if weight > 0:
            self.positive += weight
        else:
            self.negative += weight

    def score(self, floor: float) -> float:
        return self.positive + max(self.negative, floor)

    def rows(self) -> list[Offences]:
        return [Offences(self.host, r, n, first, last)
                for r, (n, first, last) in self.reasons.items()]

    def copy(self) -> Tally:
        """A snapshot for the store thread: the loop goes on adding to the original."""
        return Tally(self.host, self.started, {r: list(v) for r, v in self.reasons.items()},
                     self.positive, self.negative)


class RunningScore:
    MAX_HOSTS = 65_536  # a flood of new addresses: start again (the periodic run still counts)

    def __init__(self, scoring: ScoringConfig, *, protected: Callable[[str], str | None],
                 blocked: Callable[[str], object], score_now: ScoreNow,
                 on_blocks: Callable[[list[BlockState]], None]):
        self.configure(scoring)
        self.protected = protected
        self.blocked = blocked
        self.score_now = score_now
        self.on_blocks = on_blocks
        self.hosts: dict[str, Tally] = {}
        self.nets: dict[str, float] = {}
        self.members: dict[str, set[str]] = {}
        self._pending: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.runs = 0

    def configure(self, scoring: ScoringConfig) -> None:
        """New weights and thresholds (a reload): tallies so far are kept and judged by
        them from the next event on."""
        self.weights = scoring.all_weights()
        self.threshold = scoring.threshold
        self.network_threshold = scoring.network_threshold
        self.floor = scoring.bonus_floor
        self.window = timedelta(seconds=scoring.window)

    def record(self, event: EventRecord) -> None:
        """Called for every decision the relay records (in the event loop)."""
        weight = self.weights.get(event.reason, 0.0)
        # `blocked`: refused by this relay's gate, so blocked already (the periodic run
        # extends); the null sender's accepted mail earns nothing (blocklist/blocks.py).
        if not weight or event.reason == "blocked" or (weight < 0 and not event.sender):
            return
        host = event.host
        tally = self.hosts.get(host)
        if tally is not None and tally.started < event.ts - self.window:
            self.forget(host)
            tally = None
        if tally is None:
            if len(self.hosts) >= self.MAX_HOSTS:
                self.hosts.clear()
                self.nets.clear()
                self.members.clear()
            tally = self.hosts[host] = Tally(host, event.ts)
        before = max(0.0, tally.score(self.floor))
        tally.add(event.reason, weight, event.ts)
        after = tally.score(self.floor)
        crossed = [host] if after >= self.threshold else []
        net = network_key(host)
        if net is not None and self.network_threshold:
            self.members.setdefault(net, set()).add(host)
            total = self.nets[net] = self.nets.get(net, 0.0) + max(0.0, after) - before
            if total >= self.network_threshold and not self.protected(net):
                crossed.append(net)
        if crossed and weight > 0 and not self.protected(event.client) \
                and not self.blocked(event.client):
            self._trigger(crossed)

    def forget(self, host: str) -> None:
        tally = self.hosts.pop(host, None)
        net = network_key(host)
        if tally is None or net is None or net not in self.nets:
            return
        self.nets[net] -= max(0.0, tally.score(self.floor))
        self.members.get(net, set()).discard(host)

    def _forget_net(self, net: str) -> None:
        for host in list(self.members.pop(net, ())):
            self.hosts.pop(host, None)
        self.nets.pop(net, None)

    def _trigger(self, keys: list[str]) -> None:
        self._pending.update(keys)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="score-now")

    async def _run(self) -> None:
        """One judgement at a time; keys that cross meanwhile wait for the next."""
        while self._pending:
            keys, self._pending = self._pending, set()
            hosts = {h for k in keys for h in self.members.get(k, (k,))}
            tallies = [self.hosts[h].copy() for h in hosts if h in self.hosts]
            try:
                decisions, active, stale = await self.score_now(tallies)
            except Exception as e:
                log.error("immediate scoring failed, the periodic run decides %s",
                          kv(error=describe(e)))
                decisions, active, stale = [], [], set()
            self.runs += 1
            self.on_blocks(active)
            # judged: start again from nothing (a block pays for them; no block: they are
            # in the store, where the periodic run keeps counting them)
            for key in keys | {d.network for d in decisions}:
                if key in self.members:
                    self._forget_net(key)
                else:
                    self.forget(key)
            for host in stale:
                self.forget(host)
