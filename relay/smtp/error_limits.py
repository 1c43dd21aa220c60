"""Postfix's per-session error limits: what one SMTP session may get wrong before it is
slowed down, then cut off.

A directory-harvest bot tries recipients until it has learned which exist; a session that
may ask without limit learns a whole dictionary in a second. As Postfix's smtpd(8) does,
each reply with a 4xx or 5xx code counts one error (a `452 4.5.3` for too many recipients
does not: Postfix lets up to `smtpd_recipient_overshoot_limit` of those pass, RFC 5321 asks
clients to send the rest in another transaction). From `smtpd_soft_error_limit` errors on,
every reply waits `smtpd_error_sleep_time` first; at `smtpd_hard_error_limit` the session
gets `421 4.7.0` and is closed. NOOP, RSET, VRFY, ETRN and HELP are junk commands: past
`smtpd_junk_command_limit` of them each one counts as an error too. Both counts start over
once a message is accepted ("errors ... without delivering mail", postconf(5)).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.config.limits import LimitsConfig

JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "ETRN", "HELP"})
TOO_MANY_RCPTS = "452 4.5.3"  # not an error: see above


@dataclass(slots=True)
class SessionErrors:
    """One session's error and junk-command counts against the `[limits]` in force."""

    config: LimitsConfig
    errors: int = 0
    junk: int = 0

    def reply(self, text: str) -> None:
        """Count a reply about to be sent to the client."""
        if text[:1] in ("4", "5") and not text.startswith(TOO_MANY_RCPTS):
            self.errors += 1

    def junk_command(self) -> None:
        """Count NOOP/RSET/VRFY/ETRN/HELP; past the junk limit it is also an error
        (Postfix: `if (state->junk_cmds++ > var_smtpd_junk_cmd_limit) error_count++`)."""
        if self.junk > self.config.smtpd_junk_command_limit:
            self.errors += 1
        self.junk += 1

    def delivered(self) -> None:
        """A message was accepted: the client is sending mail, not probing."""
        self.errors = 0
        self.junk = 0

    @property
    def delay(self) -> float:
        """Seconds to wait before the next reply (Postfix sleeps on anything once past the
        soft limit)."""
        if self.errors >= self.config.smtpd_soft_error_limit:
            return self.config.smtpd_error_sleep_time
        return 0.0

    def cut_off(self) -> str | None:
        """The event reason when the session must end now (`junk_limit` when junk commands
        made it cross), else None."""
        if self.errors < self.config.smtpd_hard_error_limit:
            return None
        return "junk_limit" if self.junk > self.config.smtpd_junk_command_limit else \
            "error_limit"
