"""`[retention]`: how long raw events and their rollups are kept."""

from __future__ import annotations

from pydantic import model_validator

from relay.config.types import Duration, Strict


class RetentionConfig(Strict):
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
