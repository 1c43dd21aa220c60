"""`[domains."example.org"]`: a hosted domain and the next hop its mail is delivered to."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

from relay.config.types import parse_endpoint


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DomainConfig(_Strict):
    next_hop: str
    catch_all: bool = False

    @field_validator("next_hop")
    @classmethod
    def _hop(cls, v: str) -> str:
        if not v.startswith("mx:"):
            parse_endpoint(v)
        return v
