"""`[domains."example.org"]`: a hosted domain and the next hop its mail is delivered to."""

from __future__ import annotations

from pydantic import field_validator

from relay.config.types import Strict, parse_endpoint
from relay.config.verify import VerifyConfig


class DomainConfig(Strict):
    next_hop: str
    catch_all: bool = False
    # recipients the alias table does not hold are looked up (no section: refused as unknown)
    verify: VerifyConfig | None = None

    @field_validator("next_hop")
    @classmethod
    def _hop(cls, v: str) -> str:
        if not v.startswith("mx:"):
            parse_endpoint(v)
        return v

    @field_validator("verify")
    @classmethod
    def _verify(cls, v: VerifyConfig | None) -> VerifyConfig | None:
        if v is not None and (problem := v.problem()) is not None:
            raise ValueError(problem)
        return v
