"""`[delivery]` configuration: how accepted mail leaves for the hosted domains' own servers.

Defaults follow Postfix where it has an answer (minimal_backoff_time 300s,
maximal_backoff_time 4000s, maximal_queue_lifetime 5d), so operators find familiar numbers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from relay.config.types import Duration, Strict, parse_endpoint, parse_size

TIMEOUTS = "for the next hop: to connect, and to answer each command"


class DeliveryConfig(Strict):
    enabled: bool = True
    # Connections open at once, over all destinations, and to any one destination.
    workers: int = Field(default=20, gt=0)
    per_destination: int = Field(default=5, gt=0)
    # A connection carries up to this many messages before it is closed and reopened.
    messages_per_connection: int = Field(default=100, gt=0)
    min_backoff: Duration = 300.0
    max_backoff: Duration = 4000.0
    max_lifetime: Duration = 5 * 86400.0
    tls: Literal["opportunistic", "required", "none"] = "opportunistic"
    # Opportunistic TLS between MTAs does not verify certificates (RFC 7435); `true` does.
    tls_verify: bool = False
    connect_timeout: Duration = Field(default=30.0, description=TIMEOUTS)
    command_timeout: Duration = Field(default=120.0, description=TIMEOUTS)
    # How often the spool directory is re-read (new files, CLI deletions, held messages).
    scan_interval: Duration = 1.0
    # Where DSNs for senders in domains that are not hosted go ("host:port" or "mx:domain");
    # unset: an MX lookup of the sender's domain.
    dsn_relay: str | None = None
    # Back-pressure: new mail gets 452 4.3.1 at MAIL/RCPT past either limit (0: no limit).
    max_spool_messages: int = Field(default=100_000, ge=0)
    min_free_disk: int = 100 * 1024**2

    @field_validator("min_free_disk", mode="before")
    @classmethod
    def _size(cls, v: object) -> int:
        return parse_size(v)

    @field_validator("dsn_relay")
    @classmethod
    def _relay(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("mx:"):
            parse_endpoint(v)
        return v

    @model_validator(mode="after")
    def _order(self) -> DeliveryConfig:
        if self.max_backoff < self.min_backoff:
            raise ValueError("max_backoff must not be smaller than min_backoff")
        if self.scan_interval <= 0:
            raise ValueError("scan_interval must be positive")
        return self
