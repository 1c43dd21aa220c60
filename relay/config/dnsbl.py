"""`[dnsbl]`: the DNS blocklists asked about each connecting client.

Zones are written either as tables or postscreen style, whichever the operator has at hand:

    [dnsbl]
    reject_score = 3
    nameserver = "127.0.0.1:5300"       # omit for the system resolver (resolv.conf)
    [dnsbl.zones]
    "zen.example" = { weight = 3, codes = ["127.0.0.2-127.0.0.11"] }
    "bl.example" = "127.0.0.2*1"        # postscreen style for one zone: codes*weight
    "slow.example" = { nameserver = "192.0.2.53", timeout = 1 }

    # or, in [dnsbl]: zones = ["zen.example=127.0.0.[2..11]*3", "bl.example*1"]
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

from pydantic import Field, field_validator, model_validator

from relay.config.types import Duration, Strict


def _dns() -> ModuleType:
    """filters.dnsbl, loaded (with the DNS library) only when a [dnsbl] section needs it."""
    from filters import dnsbl

    return dnsbl


def _nameserver(v: str | None) -> str | None:
    if v is not None:
        _dns().parse_nameserver(v)
    return v


class DnsblZoneConfig(Strict):
    weight: int = 1
    # "127.0.0.2", "127.0.0.2-127.0.0.11", "127.0.0.0/24", "127.0.0.[2..11]"; empty = any
    # answer in 127/8 that is not an error code.
    codes: tuple[str, ...] = ()
    nameserver: str | None = None  # this zone only (a list served by its own rbldnsd)
    timeout: Duration | None = None  # this zone only; default [dnsbl] timeout

    @field_validator("codes")
    @classmethod
    def _codes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for c in v:
            _dns().parse_codes(c)
        return v

    @field_validator("nameserver")
    @classmethod
    def _ns(cls, v: str | None) -> str | None:
        return _nameserver(v)


TTLS = ("`min_ttl`, `max_ttl`: the range an answer's TTL is clamped to; "
        "`negative_ttl`: longest an NXDOMAIN is kept")


class DnsblCacheConfig(Strict):
    """Answers per zone and address, kept for their TTL clamped to [min_ttl, max_ttl];
    NXDOMAIN for the SOA minimum, at most negative_ttl."""

    enabled: bool = True
    max_entries: int = Field(
        default=100_000, gt=0,
        description=(
            "most verdicts kept; the least recently used go first"
        ))
    min_ttl: Duration = Field(default=0.0, description=TTLS)
    max_ttl: Duration = Field(default=3600.0, description=TTLS)
    negative_ttl: Duration = Field(default=300.0, description=TTLS)

    @model_validator(mode="after")
    def _order(self) -> DnsblCacheConfig:
        if self.max_ttl < self.min_ttl:
            raise ValueError("max_ttl must not be below min_ttl")
        return self


class DnsblConfig(Strict):
    enabled: bool = True
    zones: dict[str, DnsblZoneConfig] = Field(default_factory=dict)
    reject_score: int = 1
    nameserver: str | None = None  # "host[:port]"; None = the system resolver
    timeout: Duration = 2.0  # per zone; a zone that does not answer in time does not list
    on_error: Literal["accept", "tempfail"] = "accept"  # the filter itself breaking
    cache: DnsblCacheConfig = DnsblCacheConfig()

    @field_validator("zones", mode="before")
    @classmethod
    def _zones(cls, v: object) -> object:
        """Turn postscreen strings (a list of them, or as a zone's value) into tables."""
        if isinstance(v, list | tuple):
            out: dict[str, object] = {}
            for spec in v:
                if not isinstance(spec, str):
                    raise ValueError(f"expected \"zone=codes*weight\" strings, got {spec!r}")
                name, codes, weight = _dns().parse_site(spec)
                if name in out:
                    raise ValueError(f"zone {name!r} is listed twice")
                out[name] = {"weight": weight, "codes": codes}
            return out
        if isinstance(v, dict):
            out = {}
            for name, spec in v.items():
                key = _dns().normalize_zone(str(name))
                if key in out:
                    raise ValueError(f"zone {key!r} is listed twice")
                if isinstance(spec, str):
                    tail = spec if spec.startswith(("=", "*")) else f"={spec}"
                    _, codes, weight = _dns().parse_site(key + tail)
                    spec = {"weight": weight, "codes": codes}
                out[key] = spec
            return out
        return v

    @field_validator("nameserver")
    @classmethod
    def _ns(cls, v: str | None) -> str | None:
        return _nameserver(v)
