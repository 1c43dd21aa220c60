"""`[metrics]`: where Prometheus scrapes the relay."""

from __future__ import annotations

from pydantic import field_validator

from relay.config.types import Strict, parse_endpoint


class MetricsConfig(Strict):
    listen: str | None = None  # "127.0.0.1:9125"; None: no metrics endpoint

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_endpoint(v)
        return v

    def endpoint(self) -> tuple[str, int] | None:
        return parse_endpoint(self.listen) if self.listen else None
