"""`[domains."example.org"]`: a hosted domain and the next hop its mail is delivered to."""

from __future__ import annotations

from pydantic import field_validator

from relay.config.types import Strict, parse_endpoint


class DomainConfig(Strict):
    next_hop: str
    catch_all: bool = False

    @field_validator("next_hop")
    @classmethod
    def _hop(cls, v: str) -> str:
        if not v.startswith("mx:"):
            parse_endpoint(v)
        return v
