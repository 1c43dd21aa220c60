"""`[firewall]`: how blocks become kernel rules (names, ports, format, output file)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from relay.config.types import Duration, Strict, check_networks

_NFT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,30}$")
_CHAIN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,27}$")
_IPSET = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,26}$")  # room for the "-new" swap suffix


class FirewallConfig(Strict):
    format: Literal["nft", "ipset", "iptables"] = "nft"
    ports: list[int] = Field(default_factory=lambda: [25, 465, 587], min_length=1,
                             max_length=15)
    table: str = "floodgate"
    set_v4: str = "blocked4"
    set_v6: str = "blocked6"
    priority: int = -10
    ipset_v4: str = "floodgate4"
    ipset_v6: str = "floodgate6"
    ipset_maxelem: int = Field(default=1_048_576, gt=0)
    chain: str = "FLOODGATE"
    hook: Literal["INPUT", "FORWARD"] = "INPUT"
    output: Path | None = None
    interval: Duration = 30.0
    reapply: Duration = 3600.0
    max_timeout: Duration = 365 * 86_400.0
    never_block: list[str] = Field(default_factory=list)

    @field_validator("interval", "max_timeout")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v < 1:
            raise ValueError("must be at least 1 second")
        return v

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for p in v:
            if not 0 < p < 65536:
                raise ValueError(f"port {p} is out of range 1-65535")
        if len(set(v)) != len(v):
            raise ValueError("a port is listed twice")
        return v

    @field_validator("table", "set_v4", "set_v6")
    @classmethod
    def _nft_name(cls, v: str) -> str:
        if not _NFT_NAME.match(v):
            raise ValueError(f"{v!r}: letters, digits and _ only, up to 31, starting with a letter")
        return v

    @field_validator("ipset_v4", "ipset_v6")
    @classmethod
    def _ipset_name(cls, v: str) -> str:
        if not _IPSET.match(v):
            raise ValueError(f"{v!r}: letters, digits and _ only, up to 27, starting with a letter")
        return v

    @field_validator("chain")
    @classmethod
    def _chain(cls, v: str) -> str:
        if not _CHAIN.match(v) or v in ("INPUT", "FORWARD", "OUTPUT", "PREROUTING"):
            raise ValueError(f"{v!r}: a new chain name, letters, digits, _ and -, up to 28")
        return v

    @field_validator("never_block")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        return check_networks(v)
