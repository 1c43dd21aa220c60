"""`[greylist]`: selective greylisting (postgrey, rspamd): a first attempt from a host
without good history is told to come back later; bots that never retry never get in."""

from __future__ import annotations

from pydantic import Field, field_validator

from filters.address import normalise_domain
from relay.config.types import Duration, Strict


class GreylistConfig(Strict):
    enabled: bool = Field(default=False, description="greylist new triplets at RCPT")
    delay: Duration = Field(
        default=300.0,
        description="a retry of the same (network, sender, recipient) passes after this long")
    retry_window: Duration = Field(
        default=2 * 86_400.0,
        description="... and within this long of the first attempt; later it starts again")
    allow_lifetime: Duration = Field(
        default=35 * 86_400.0,
        description="a network that passed once is not greylisted again for this long")
    history: Duration = Field(
        default=30 * 86_400.0,
        description="a host with mail accepted within this long is never greylisted")
    max_pending: int = Field(
        default=100, gt=0,
        description="new triplets a client network may have waiting for their retry")
    opt_out: list[str] = Field(
        default_factory=list,
        description="recipient domains never greylisted")

    @field_validator("opt_out")
    @classmethod
    def _opt_out(cls, v: list[str]) -> list[str]:
        out = []
        for name in v:
            key = normalise_domain(name)
            if not key or "." not in key:
                raise ValueError(f"{name!r}: not a domain name")
            out.append(key)
        return out
