"""`[auth]`: mail authentication (SPF, DKIM, DMARC, ARC) and what a DMARC p=reject failure
gets, globally and per hosted domain."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from filters.address import normalise_domain
from relay.config.types import Strict, per_domain

DmarcReject = Literal["reject", "tag", "none"]


class AuthConfig(Strict):
    enabled: bool = Field(
        default=False,
        description="check SPF, DKIM, DMARC and ARC after DATA and add Authentication-Results")
    nameserver: str | None = Field(
        default=None,
        description='`"HOST:PORT"` asked for every authentication lookup; unset: the system '
                    "resolver (/etc/resolv.conf)")
    timeout: float = Field(default=5.0, gt=0, description="seconds for one DNS query")
    dmarc_reject: DmarcReject = Field(
        default="reject",
        description='what a DMARC `p=reject` failure gets: `"reject"` (`550 5.7.1` in the '
                    'session), `"tag"` (accepted, the failure in Authentication-Results and an '
                    '`X-Floodgate-DMARC` header a mailbox filter can act on), `"none"` (only '
                    'recorded)')
    # [auth.domains] "example.org" = "tag": that hosted domain's dmarc_reject
    domains: dict[str, DmarcReject] = Field(default_factory=dict)
    trusted_arc_sealers: list[str] = Field(
        default_factory=list,
        description="ARC sealer domains (mailing lists, forwarders) whose passing chain "
                    "overrides a DMARC failure: recorded, not refused")

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: dict[str, DmarcReject]) -> dict[str, DmarcReject]:
        return per_domain(v)

    @field_validator("trusted_arc_sealers")
    @classmethod
    def _sealers(cls, v: list[str]) -> list[str]:
        return [normalise_domain(d) for d in v]

    def reject_action(self, domain: str) -> DmarcReject:
        """What a p=reject failure gets for mail to `domain` (normalised)."""
        return self.domains.get(domain, self.dmarc_reject)
