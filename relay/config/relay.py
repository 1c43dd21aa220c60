"""`[relay]` and `[relay.tls]`: where the relay listens, what it accepts, and its identity."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from filters.address import split_address
from relay.config.types import Duration, Strict, parse_endpoint


class TLSConfig(Strict):
    cert: Path
    key: Path
    required: bool = False


class RelayConfig(Strict):
    node: str = "relay1"
    hostname: str = "localhost"
    listen: list[str] = Field(default_factory=lambda: ["127.0.0.1:2525"], min_length=1)
    max_message_size: int = Field(default=26_214_400, gt=0)
    max_recipients: int = Field(default=100, gt=0)
    spool_dir: Path = Path("var/spool")
    # Where the relative paths of what Floodgate writes (spool_dir, a SQLite store.url,
    # firewall.output) resolve; None: $STATE_DIRECTORY (systemd), else the config's directory.
    state_dir: Path | None = Field(default=None, description=(
        "the directory relative `spool_dir`, SQLite `store.url` and `firewall.output` are "
        "resolved against"))
    idle_timeout: Duration = 300.0
    shutdown_grace: Duration = 30.0
    recipient_delimiter: str = ""
    local_part_case: Literal["insensitive", "sensitive"] = "insensitive"
    tls: TLSConfig | None = None
    # Where mail for <postmaster> (RFC 5321 4.5.1: accepted without a domain) and for an
    # unknown postmaster@<hosted domain> goes; "" means postmaster@ the first hosted domain.
    postmaster: str = ""
    # Postfix's hopcount_limit: more Received: lines than this is a mail loop, 554 5.4.6.
    hopcount_limit: int = Field(default=50, ge=1)

    @field_validator("postmaster")
    @classmethod
    def _postmaster(cls, v: str) -> str:
        if v and (split_address(v) is None or any(c <= " " or c == "\x7f" for c in v)):
            raise ValueError(f"{v!r}: a full address, user@domain")
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: list[str]) -> list[str]:
        for item in v:
            host, _ = parse_endpoint(item)
            if host not in ("localhost", "*"):
                try:
                    ipaddress.ip_address(host)
                except ValueError as e:
                    raise ValueError(f"{item!r}: listen on an IP address, not {host!r}") from e
        return v

    @field_validator("recipient_delimiter")
    @classmethod
    def _delim(cls, v: str) -> str:
        if len(v) > 1 or v in ("@", " "):
            raise ValueError("a single character such as \"+\" or \"-\", or \"\" to turn it off")
        return v

    def endpoints(self) -> list[tuple[str, int]]:
        return [parse_endpoint(x) for x in self.listen]
