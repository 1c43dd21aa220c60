"""Continuous scoring inside `serve`: offences in, blocks out.

Every relay sharing a store may run it: writes are upserts keyed by network, so two relays
deciding the same block converge on one row.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from blocklist import blocks
from blocklist.scoring import BlockDecision, Protection, decide, score_hosts
from relay.hosts_config import BlocklistConfig, ScoringConfig
from relay.logs import kv
from relay.store import describe, in_store_thread

log = logging.getLogger("floodgate.scoring")


class Scorer:
    def __init__(self, engine: Engine, scoring: ScoringConfig, blocklist: BlocklistConfig,
                 protection: Protection, node: str):
        self.engine = engine
        self.scoring = scoring
        self.blocklist = blocklist
        self.protection = protection
        self.node = node
        self.weights = scoring.all_weights()
        self._failing = False

    def run_once(self, now: datetime | None = None) -> list[BlockDecision]:
        now = now or datetime.now(UTC)
        reasons = [r for r, w in self.weights.items() if w != 0]
        offences = blocks.load_offences(
            self.engine, since=now - timedelta(seconds=self.scoring.window), now=now,
            reasons=reasons)
        scores = score_hosts(offences, self.weights)
        existing = blocks.load_blocks(self.engine)
        protection = self.protection.with_allow(n for n, _, _ in blocks.allow_list(self.engine))
        decisions = decide(scores, existing, threshold=self.scoring.threshold,
                           duration=self.blocklist.duration,
                           recidive_window=self.blocklist.recidive_window,
                           protected=protection.why, weights=self.weights, now=now)
        blocks.write_decisions(self.engine, decisions, self.node, now)
        for d in decisions:
            log.info("%s %s", "block" if d.new else "block extended", kv(
                network=d.network, score=f"{d.score:g}", level=d.level,
                until=d.expires.isoformat(timespec="seconds"), reason=d.reason))
        blocks.prune(self.engine, now - timedelta(seconds=self.blocklist.history))
        return decisions

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.scoring.interval)
            try:
                await in_store_thread(self.run_once)
                if self._failing:
                    log.warning("scoring running again")
                self._failing = False
            except Exception as e:
                if not self._failing:
                    log.error("scoring failed, will retry %s", kv(error=describe(e)))
                    self._failing = True
