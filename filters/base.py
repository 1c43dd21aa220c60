"""What every check shares: the verdict it returns and the stage it runs at.

A filter knows its own service and nothing else: the relay hands it lookups as plain
callables, so filters never import the store or the SMTP server.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol


class Action(enum.StrEnum):
    ACCEPT = "accept"
    TEMPFAIL = "tempfail"
    REJECT = "reject"
    # a refusal that observe mode ([policy]) only records; the relay sets it, no filter does
    OBSERVE = "observe"


class Stage(enum.StrEnum):
    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision and the SMTP reply it implies (`550 5.1.1 User unknown`)."""

    action: Action
    code: int
    status: str
    reason: str
    text: str
    detail: str = ""
    # Header fields an ACCEPT asks the relay to prepend to the spooled message, in order
    # (X-Spam-Status, X-Floodgate-Unscanned ...). Ignored on REJECT and TEMPFAIL.
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def reply(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @classmethod
    def reject(cls, code: int, status: str, reason: str, text: str, detail: str = "") -> Verdict:
        return cls(Action.REJECT, code, status, reason, text, detail)

    @classmethod
    def tempfail(
        cls, code: int, status: str, reason: str, text: str, detail: str = ""
    ) -> Verdict:
        return cls(Action.TEMPFAIL, code, status, reason, text, detail)

    @classmethod
    def accept(
        cls, code: int, status: str, reason: str, text: str, detail: str = "",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Verdict:
        return cls(Action.ACCEPT, code, status, reason, text, detail, headers)


@dataclass(slots=True)
class Context:
    """What a filter may look at: the transaction so far."""

    client: str
    helo: str = ""
    mail_from: str = ""
    rcpt: str = ""
    rcpts: list[str] = field(default_factory=list)
    content: bytes = b""
    # each filter's own verdict as one `name=value(source)` token (source: `scanned`,
    # `cached`, `looked_up`), for the event `floodgate trace` reads: a refusal says only
    # the filter that refused, and an accepted message nothing of the scans it passed
    notes: list[str] = field(default_factory=list)


def verdict_note(name: str, value: str, source: str) -> str:
    """One Context.notes token; `value` loses its blanks so the token stays one word."""
    return f"{name}={'_'.join(value.split()) or '-'}({source})"


class OnError(Protocol):
    """What the pipeline asks of a check's failure policy (filters/failure.py
    FailurePolicy is the one implementation; base stays below it)."""

    def failed(self, why: str) -> Verdict | None: ...


class Filter(Protocol):
    name: str
    stage: Stage
    timeout: float
    on_error: OnError  # what the pipeline makes of a check that raises or times out

    async def check(self, ctx: Context) -> Verdict | None:
        """A verdict ends the stage; None lets the next filter look."""
        ...
