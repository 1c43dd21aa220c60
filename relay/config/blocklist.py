"""`[blocklist]`: what a block costs the host (how long, how it escalates) and who is never
blocked."""

from __future__ import annotations

from pydantic import Field, field_validator

from relay.config.types import Duration, Strict, check_networks


class BlocklistConfig(Strict):
    block_time: Duration = 86_400.0
    max_block_time: Duration = 30 * 86_400.0
    escalation: float = Field(default=2.0, ge=1.0)
    recidive_window: Duration = 7 * 86_400.0
    history: Duration = 30 * 86_400.0
    allow: list[str] = Field(default_factory=list)
    protect_loopback: bool = True

    @field_validator("allow")
    @classmethod
    def _allow(cls, v: list[str]) -> list[str]:
        return check_networks(v)

    def duration(self, level: int) -> float:
        """Block time at escalation `level` (1 = first offence), capped at max_block_time."""
        return min(self.block_time * self.escalation ** max(0, level - 1), self.max_block_time)
