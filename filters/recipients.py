"""RCPT check: is the domain hosted, and is the address a known alias?

This is the check that saved the 2004 relays: refusing unknown recipients while the sender
is still connected costs one set lookup instead of a scan and a bounce.

For a domain with verification (`verifies`), an address the alias table does not hold is
looked up (`verify`: the domain's own server or its directory) instead of refused. A lookup
that cannot answer is `450 4.1.1`, never `550`: the sender retries, nothing valid bounces.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from filters.address import split_address
from filters.base import Context, Stage, Verdict
from filters.failure import FailurePolicy

RELAY_DENIED = Verdict.reject(554, "5.7.1", "relay_denied", "Relay access denied")
UNKNOWN = Verdict.reject(550, "5.1.1", "unknown_rcpt", "User unknown in virtual alias table")
KNOWN = Verdict.accept(250, "2.1.5", "known_rcpt", "Ok")
# A trap answers exactly like an unknown address: the sender learns nothing.
TRAP = Verdict.reject(550, "5.1.1", "trap", UNKNOWN.text)
# RFC 3463 X.1.1 with a 4xx: the mailbox could not be confirmed now (Postfix's
# unverified_recipient_defer_code, 450).
UNVERIFIED_TEXT = "Recipient address not verified, try again later"
BAD_ADDRESS = Verdict.reject(501, "5.1.3", "protocol", "Bad recipient address syntax")
# A lookup that breaks is a 451, never "no opinion": that would refuse the recipient as 554.
RCPT_FAILURE = FailurePolicy("recipients", stage=Stage.RCPT)


@dataclass(frozen=True, slots=True)
class Lookup:
    """A verification's answer: `known` True or False, or None when it could not say;
    `limited`: None because the domain's lookup rate was spent, no lookup was made."""

    known: bool | None
    detail: str = ""
    limited: bool = False


def unverified(detail: str, limited: bool = False) -> Verdict:
    """The same 450 either way; the reason tells a next hop that could not answer
    (`rcpt_unverified`, no offence: every sender retrying meanwhile gets it) from a guess past
    the rate (`verify_limited`, scored: what a dictionary attack gets once the bucket is
    empty, while a real sender's recipients are in the alias table or cached)."""
    return Verdict.tempfail(450, "4.1.1", "verify_limited" if limited else "rcpt_unverified",
                            UNVERIFIED_TEXT, detail=detail)


async def _no_lookup(local: str, domain: str) -> Lookup:
    return Lookup(False)


@dataclass(slots=True)
class RecipientFilter:
    """Decides RCPT from injected lookups: hosted(domain), trap(...) and known(local, domain);
    verifies(domain) and verify(local, domain) for addresses the table does not hold."""

    hosted: Callable[[str], bool]
    known: Callable[[str, str], bool]
    trap: Callable[[str, str], bool] = lambda local, domain: False
    verifies: Callable[[str], bool] = lambda domain: False
    verify: Callable[[str, str], Awaitable[Lookup]] = _no_lookup
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
        verdict = self.decide(ctx.rcpt)
        if verdict is not UNKNOWN:
            return verdict
        local, domain = split_address(ctx.rcpt) or ("", "")
        if not self.verifies(domain):
            return verdict
        answer = await self.verify(local, domain)
        if answer.known is None:
            return unverified(answer.detail, answer.limited)
        if answer.known:
            return Verdict.accept(250, "2.1.5", "known_rcpt", "Ok", detail=answer.detail)
        return Verdict.reject(UNKNOWN.code, UNKNOWN.status, UNKNOWN.reason, UNKNOWN.text,
                              detail=answer.detail)
