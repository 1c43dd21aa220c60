"""`[limits]`: what one client, or all of them together, may cost the relay.

Defaults follow Postfix where it has one (anvil's per-client connection count 50, the
RFC 5321 4.5.3.2 timeouts, smtpd's error limits) and keep loopback exempt, as Postfix
exempts $mynetworks, so local tools and benchmarks are not throttled by accident.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from relay.config.types import Duration, Strict, check_networks, parse_size


class LimitsConfig(Strict):
    # Connections open at once, over all clients (0: no cap): `421 4.3.2` beyond.
    max_connections: int = Field(default=10_000, ge=0)
    # Per client address (IPv6: per store.ipv6_prefix network): `421 4.7.0` beyond.
    max_per_client: int = Field(default=50, ge=0)
    # New connections per client within rate_window (0: no limit).
    connection_rate: int = Field(default=0, ge=0)
    rate_window: Duration = Field(
        default=60.0,
        description=(
            "the window `connection_rate` counts new connections in"
        ))
    # Networks the per-client limits do not apply to (the global cap still does).
    exempt: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # postscreen's greet_wait: hold the banner this long, watching for early talkers.
    greet_wait: Duration = 0.0
    pregreet_action: Literal["record", "drop"] = "record"
    # Whole session, however busy (slowloris sending a command every idle_timeout).
    session_timeout: Duration = 3600.0
    # From the 354 to the client's final dot (RFC 5321 4.5.3.2: 3 min per block, we
    # allow the whole transfer this long).
    data_timeout: Duration = 600.0
    # From the final dot to our reply: scanning and queueing. RFC 5321 4.5.3.2.6 gives
    # the client 10 minutes; replying well inside that avoids a duplicate delivery.
    reply_timeout: Duration = 300.0
    # Null-sender (`MAIL FROM:<>`) messages one client may have queued at once, as a
    # fraction of delivery.max_spool_messages (0: no limit): they are the cheapest mail to
    # send and cannot be answered by a DSN, so one client must not fill the spool with them.
    null_sender_share: float = Field(default=0.01, ge=0, le=1)
    # Postfix's session error limits (relay/smtp/error_limits.py): replies with a 4xx/5xx code
    # are errors; from the soft limit on every reply waits error_sleep_time, at the hard
    # limit the session gets 421 and is closed. Past the junk command limit each NOOP,
    # RSET, VRFY, ETRN or HELP counts as an error.
    smtpd_soft_error_limit: int = Field(default=10, ge=1)
    smtpd_error_sleep_time: Duration = Field(
        default=1.0, description="the wait before each reply once past `smtpd_soft_error_limit`")
    smtpd_hard_error_limit: int = Field(default=20, ge=1)
    smtpd_junk_command_limit: int = Field(default=100, ge=1)
    # Bytes of one header field of the message, folded lines included (Postfix's
    # header_size_limit). Postfix cuts the excess; here the message is refused with
    # `552 5.3.4` before any scan, so nothing is delivered altered (0: no limit).
    header_size_limit: int = Field(default=102_400, ge=0)
    # DATA held in memory for one message; the rest goes to a file in the spool's tmp/.
    data_memory_per_message: int = 1024**2
    # DATA held in memory by all sessions together; beyond it every message spills.
    data_memory_total: int = 64 * 1024**2
    # Postfix's smtpd_forbid_bare_newline: a bare LF (or CR) in DATA ends a line as CRLF
    # does ("normalize", Postfix 3.9's default), or the message is refused ("reject").
    # Either way only <CRLF>.<CRLF> ends DATA.
    bare_newline: Literal["normalize", "reject"] = "normalize"

    @field_validator("data_memory_per_message", "data_memory_total", mode="before")
    @classmethod
    def _size(cls, v: object) -> int:
        return parse_size(v)

    @field_validator("exempt")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        return check_networks(v)

    @model_validator(mode="after")
    def _reply_inside_client_timeout(self) -> LimitsConfig:
        if self.reply_timeout > 540:
            raise ValueError("reply_timeout: keep it under the client's 10 minutes "
                             "(RFC 5321 4.5.3.2.6), at most 9m")
        return self
