"""`[metrics]` and `[retention]`: where Prometheus scrapes, and how long history is kept."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from relay.config.types import Duration, parse_endpoint


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricsConfig(_Strict):
    listen: str | None = None  # "127.0.0.1:9125"; None: no metrics endpoint

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_endpoint(v)
        return v

    def endpoint(self) -> tuple[str, int] | None:
        return parse_endpoint(self.listen) if self.listen else None


class RetentionConfig(_Strict):
    """Raw events are big and only needed for recent detail; rollups answer the long
    reports. 0 keeps forever."""

    events: Duration = 30 * 86_400.0
    rollups: Duration = 400 * 86_400.0
    interval: Duration = 3_600.0

    @model_validator(mode="after")
    def _order(self) -> RetentionConfig:
        if self.rollups and (not self.events or self.rollups < self.events):
            raise ValueError("retention.rollups: must be at least retention.events "
                             "(reports read rollups)")
        if self.interval <= 0:
            raise ValueError("retention.interval: must be more than 0")
        return self
