"""`[scoring]`: how offences add up to a score, and the score that blocks a host."""

from __future__ import annotations

import difflib
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator

from relay.config.types import Duration, Strict
from relay.reasons import Reason

_REASONS = [r.value for r in Reason]


def event_reason(key: str) -> str:
    """A `[scoring.weights]` key must be an event reason: a misspelt one would weigh nothing
    in silence."""
    if key in _REASONS:
        return key
    close = difflib.get_close_matches(key, _REASONS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "one of " + ", ".join(_REASONS)
    raise ValueError(f"unknown key: not an event reason ({hint})")


DEFAULT_WEIGHTS: dict[str, float] = {
    "unknown_rcpt": 1, "relay_denied": 2, "virus": 5, "spam": 3, "dnsbl": 1, "protocol": 2,
    "trap": 10, "blocked": 1, "size": 0, "too_many_rcpts": 0, "accepted": -1,
    "rate_limit": 1, "pregreet": 3,
    # an unknown-looking recipient refused with 450 only because the domain's verification
    # rate was spent: the dictionary attack's guesses past the bucket (rcpt_unverified, a
    # next hop that could not answer, stays 0: every sender retrying meanwhile gets it)
    "verify_limited": 1,
    # a session cut off at smtpd_hard_error_limit (or by its junk commands): on top of the
    # errors themselves, for not stopping at the soft limit's delays
    "error_limit": 3, "junk_limit": 3,
}
for _reason in DEFAULT_WEIGHTS:
    event_reason(_reason)


class ScoringConfig(Strict):
    enabled: bool = Field(
        default=True,
        description=(
            "`serve` scores hosts and blocks those at `threshold`; `false`: events "
            "are still recorded, nobody is blocked for their score"
        ))
    weights: dict[Annotated[str, AfterValidator(event_reason)], float] = Field(
        default_factory=dict)
    window: Duration = 86_400.0
    threshold: float = Field(default=10.0, gt=0)
    interval: Duration = 15.0
    network_threshold: float = Field(default=30.0, ge=0)
    bonus_floor: float = Field(default=-5.0, le=0)
    traps: list[str] = Field(default_factory=list)

    @field_validator("traps")
    @classmethod
    def _traps(cls, v: list[str]) -> list[str]:
        for t in v:
            if "@" not in t:
                raise ValueError(f"{t!r}: a trap is a full address, user@domain")
        return v

    def all_weights(self) -> dict[str, float]:
        """The defaults with the configured weights on top: naming one keeps the others."""
        return {**DEFAULT_WEIGHTS, **self.weights}

    def offences(self) -> frozenset[str]:
        """The reasons that add to a score (an event writer in a flood keeps these per host
        before anything else)."""
        return frozenset(r for r, w in self.all_weights().items() if w > 0)
