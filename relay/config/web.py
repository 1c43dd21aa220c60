"""`[web]`: the HTTP console, API and blocklist feeds (`floodgate web`)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from relay.config.types import Strict, parse_endpoint

Scope = Literal["read", "admin"]
MIN_TOKEN = 16  # a token is a password typed into a header: short ones are guessable


class TokenSpec(Strict):
    """`"secret" = "admin"`, or `"secret" = { scope = "admin", name = "alice" }` to give
    it a name for the audit trail (else `config:` + the start of the token's SHA-256)."""

    scope: Scope
    name: str | None = Field(default=None, min_length=1, max_length=64)


class WebConfig(Strict):
    listen: str = "127.0.0.1:8025"
    public_feeds: bool = False
    tokens: dict[str, TokenSpec] = Field(default_factory=dict)
    refresh: float = Field(default=5.0, ge=1.0, le=3600.0)  # console refresh, seconds
    # Bytes of a request body; more is 413 before authentication (relay/web/body_limit.py).
    max_body_size: int = Field(default=1_048_576, gt=0)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, _ = parse_endpoint(v)
        if host != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError as e:
                raise ValueError(f"{v!r}: listen on an IP address, not {host!r}") from e
        return v

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens(cls, v: object) -> object:
        if not isinstance(v, dict):
            return v
        for token in v:
            if len(token) < MIN_TOKEN or token != token.strip():
                raise ValueError(f"a token must be at least {MIN_TOKEN} characters, "
                                 "without surrounding spaces")
        return {k: {"scope": s} if isinstance(s, str) else s for k, s in v.items()}

    def endpoint(self) -> tuple[str, int]:
        return parse_endpoint(self.listen)
