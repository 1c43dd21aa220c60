"""`[spamassassin]`: the spamd daemons that score messages, the thresholds (global and per
domain) that tag or refuse, and what a failure gets."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from filters.address import normalise_domain
from relay.config.types import Duration, OnError, OnOversize, Strict, scanner_address


class SpamThresholds(Strict):
    tag_score: float
    reject_score: float

    @model_validator(mode="after")
    def _order(self) -> SpamThresholds:
        if self.reject_score < self.tag_score:
            raise ValueError("reject_score must not be below tag_score")
        return self


class SpamCacheConfig(Strict):
    """Scores by digest of the whole message as spamd sees it (headers too: they score)."""

    enabled: bool = True
    max_entries: int = Field(default=50_000, gt=0)
    ttl: Duration = 600.0


class SpamAssassinConfig(SpamThresholds):
    """The global thresholds (checked in order by SpamThresholds) and everything else."""

    enabled: bool = Field(
        default=True,
        description=(
            "score DATA with spamd; `false` keeps the section but scores nothing"
        ))
    address: str | list[str] = "127.0.0.1:783"  # or a list: used in turn
    timeout: Duration = Field(default=30.0, description="for connect, send and score together")
    on_error: OnError = "tempfail"
    tag_score: float = 5.0
    reject_score: float = 10.0
    # [spamassassin.domains."example.org"] tag_score = 3.0, reject_score = 6.0
    # Most specific domain rule wins per recipient; the strictest across recipients.
    domains: dict[str, SpamThresholds] = Field(default_factory=dict)
    max_size: int = Field(default=524_288, ge=0)  # bytes; 0 = no limit
    on_oversize: OnOversize = Field(
        default="accept",
        description='`"accept"` (marked `X-Floodgate-Unscanned`), `"reject"` (`552 5.3.4`) '
                    'or `"tempfail"`')
    concurrency: int = Field(default=5, gt=0)  # keep at or below spamd's --max-children
    cache: SpamCacheConfig = SpamCacheConfig()

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str | list[str]) -> str | list[str]:
        return scanner_address(v)

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: dict[str, SpamThresholds]) -> dict[str, SpamThresholds]:
        out: dict[str, SpamThresholds] = {}
        seen: dict[str, str] = {}
        for name, limits in v.items():
            key = normalise_domain(name)  # as filters.spamassassin looks the domain up
            if key in seen:
                raise ValueError(f"{name!r}: same domain as {seen[key]!r}")
            seen[key], out[key] = name, limits
        return out
