"""RCPT check: is the domain hosted, and is the address a known alias?

This is the check that saved the 2004 relays: refusing unknown recipients while the sender
is still connected costs one set lookup instead of a scan and a bounce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from filters.address import split_address
from filters.base import Context, Stage, Verdict
from filters.failure import FailurePolicy

RELAY_DENIED = Verdict.reject(554, "5.7.1", "relay_denied", "Relay access denied")
UNKNOWN = Verdict.reject(550, "5.1.1", "unknown_rcpt", "User unknown in virtual alias table")
KNOWN = Verdict.accept(250, "2.1.5", "known_rcpt", "Ok")
# A trap answers exactly like an unknown address: the sender learns nothing.
TRAP = Verdict.reject(550, "5.1.1", "trap", UNKNOWN.text)
BAD_ADDRESS = Verdict.reject(501, "5.1.3", "protocol", "Bad recipient address syntax")
# A lookup that breaks is a 451, never "no opinion": that would refuse the recipient as 554.
RCPT_FAILURE = FailurePolicy("recipients", stage=Stage.RCPT)


@dataclass(slots=True)
class RecipientFilter:
    """Decides RCPT from injected lookups: hosted(domain), trap(...) and known(local, domain)."""

    hosted: Callable[[str], bool]
    known: Callable[[str, str], bool]
    trap: Callable[[str, str], bool] = lambda local, domain: False
    name: str = "recipients"
    stage: Stage = Stage.RCPT
    timeout: float = 1.0
    on_error: FailurePolicy = RCPT_FAILURE

    def decide(self, address: str) -> Verdict:
        parts = split_address(address)
        if parts is None:
            return BAD_ADDRESS
        local, domain = parts
        if not self.hosted(domain):
            return RELAY_DENIED
        if self.trap(local, domain):
            return TRAP
        return KNOWN if self.known(local, domain) else UNKNOWN

    async def check(self, ctx: Context) -> Verdict | None:
        return self.decide(ctx.rcpt)
