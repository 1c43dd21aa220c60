"""Continuous scoring inside `serve`: offences in, blocks out.

Every relay sharing a store may run it: writes are upserts keyed by network, so two relays
deciding the same block converge on one row.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from blocklist import blocks
from blocklist.protection import Protection
from blocklist.scoring import (
    OBSERVE_SOURCE,
    BlockDecision,
    BlockState,
    Offences,
    cutoff,
    decide,
    network_key,
    score_hosts,
    score_networks,
)
from relay.config.blocklist import BlocklistConfig
from relay.config.scoring import ScoringConfig
from relay.hosts.tally import Tally
from relay.logs import kv
from relay.store.polling import poll_every

log = logging.getLogger("floodgate.scoring")


class Scorer:
    def __init__(self, engine: Engine, scoring: ScoringConfig, blocklist: BlocklistConfig,
                 protection: Protection, node: str, observe: bool = False):
        self.engine = engine
        self.node = node
        self.configure(scoring, blocklist, protection, observe)

    def configure(self, scoring: ScoringConfig, blocklist: BlocklistConfig,
                  protection: Protection, observe: bool = False) -> None:
        """New thresholds, weights and durations (a reload): the next run uses them.
        `observe`: every hosted domain observes ([policy]); new blocks are written with
        source `observe`, which the gate only records and the firewall never gets."""
        self.observe = observe
        self.scoring = scoring
        self.blocklist = blocklist
        self.protection = protection
        self.weights = scoring.all_weights()

    def run_once(self, now: datetime | None = None) -> list[BlockDecision]:
        reasons = [r for r, w in self.weights.items() if w != 0]
        while True:
            at = now or datetime.now(UTC)
            offences = blocks.load_offences(
                self.engine, since=at - timedelta(seconds=self.scoring.window), now=at,
                reasons=reasons)
            existing = blocks.load_blocks(self.engine)
            if now is not None or not _ended_meanwhile(existing, at):
                break
        now = at
        decisions = self._decide(offences, existing, now)
        blocks.write_decisions(self.engine, decisions, self.node, now)
        self._log(decisions)
        blocks.prune(self.engine, now - timedelta(seconds=self.blocklist.history))
        return decisions

    def run_hosts(self, tallies: list[Tally], now: datetime | None = None
                  ) -> tuple[list[BlockDecision], list[BlockState], set[str]]:
        """Score hosts from what this relay has just recorded (not yet in the store), the
        moment one of them or its /24 crosses its threshold. Returns the decisions written,
        the blocks now active for these hosts (for the gate) and the hosts whose tally is
        no longer good (a block since ended after the tally began: the periodic run over
        the store decides for them)."""
        keys = {t.host for t in tallies}
        keys |= {n for n in map(network_key, keys) if n is not None}
        while True:
            at = now or datetime.now(UTC)
            existing = blocks.load_blocks(self.engine, keys)
            if now is not None or not _ended_meanwhile(existing, at):
                break
        now = at
        stale = set()
        for t in tallies:
            for key in (t.host, network_key(t.host)):
                cut = cutoff(existing.get(key) if key else None, now)
                if cut is not None and cut >= t.started:
                    stale.add(t.host)
        rows = [row for t in tallies if t.host not in stale for row in t.rows()]
        decisions = self._decide(rows, existing, now)
        blocks.write_decisions(self.engine, decisions, self.node, now)
        self._log(decisions)
        decided = {d.network for d in decisions}
        active = [b for k, b in existing.items() if b.expires > now and k not in decided]
        return decisions, [*active, *(d.state() for d in decisions)], stale

    def _decide(self, offences: list[Offences], existing: dict[str, BlockState],
                now: datetime) -> list[BlockDecision]:
        """Hosts over `threshold`, then /24 networks over `network_threshold` counting
        only hosts that are neither blocked nor being blocked now."""
        scores = score_hosts(offences, self.weights, self.scoring.bonus_floor)
        protection = self.protection.with_allow(n for n, _, _ in blocks.allow_list(self.engine))
        common = dict(duration=self.blocklist.duration,
                      recidive_window=self.blocklist.recidive_window,
                      protected=protection.why, weights=self.weights, now=now)
        decisions = self._source(
            decide(scores, existing, threshold=self.scoring.threshold, **common))
        if not self.scoring.network_threshold:
            return decisions
        decided = {d.network for d in decisions}

        def paid(host: str) -> bool:
            block = existing.get(host)
            return host in decided or (block is not None and block.expires > now)

        nets = score_networks(scores, paid)
        return decisions + self._source(
            decide(nets, existing, threshold=self.scoring.network_threshold, **common))

    def _source(self, decisions: list[BlockDecision]) -> list[BlockDecision]:
        """Observe mode: new blocks are the scorer's record of what it would have done."""
        if not self.observe:
            return decisions
        return [dataclasses.replace(d, source=OBSERVE_SOURCE) if d.new else d
                for d in decisions]

    @staticmethod
    def _log(decisions: list[BlockDecision]) -> None:
        for d in decisions:
            log.info("%s %s", "block" if d.new else "block extended", kv(
                network=d.network, score=f"{d.score:g}", level=d.level,
                until=d.expires.isoformat(timespec="seconds"), reason=d.reason))

    async def loop(self) -> None:
        await poll_every(self.scoring.interval, self.run_once, logger=log.name,
                         failed="scoring failed, will retry", recovered="scoring running again")


def _ended_meanwhile(existing: dict[str, BlockState], at: datetime) -> bool:
    """Whether a block read as active at `at` had already ended when the read finished: an
    operator's unblock between taking the time and reading the store. Judged at `at`, it
    would be active, and its extension (compare-and-set on the expiry just read) would
    undo the unblock; the caller reads again with a later time."""
    after = datetime.now(UTC)
    return any(at < b.expires <= after for b in existing.values())
