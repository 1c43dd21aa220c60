"""`[policy]`: enforce the refusals of scoring, blocking, DNSBL and DMARC, or only record them
(observe mode), for every hosted domain or per domain."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from relay.config.types import Strict, per_domain

Mode = Literal["enforce", "observe"]


class PolicyConfig(Strict):
    mode: Mode = Field(
        default="enforce",
        description=(
            '`"observe"`: refusals by scoring, blocking and DNSBL are recorded as '
            "would-have-refused (event action `observe`, the reason and `554` they would "
            "have carried) and the session goes on; a DMARC p=reject refusal is recorded "
            "the same way and the message accepted, tagged"
        ))
    # [policy.domains] "example.org" = "observe": that domain's mode, overriding `mode`
    domains: dict[str, Mode] = Field(default_factory=dict)

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: dict[str, Mode]) -> dict[str, Mode]:
        return per_domain(v)

    def observed(self, hosted: list[str]) -> frozenset[str]:
        """The hosted domains (normalised) whose mode is observe."""
        return frozenset(d for d in hosted if self.domains.get(d, self.mode) == "observe")
