"""Observe mode: which refusals by blocking and DNSBL are only recorded, for which domains.

A connect-time refusal cannot know the recipient's domain; while any hosted domain observes,
the gate's and DNSBL's refusals wait for RCPT (Postfix's smtpd_delay_reject), where an
enforcing domain's recipient is refused with them and an observing domain's is let through,
the would-be refusal recorded (action `observe`) once per session and reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from filters.address import normalise_domain
from filters.base import Action, Verdict


@dataclass(frozen=True, slots=True)
class Observe:
    domains: frozenset[str] = frozenset()  # normalised hosted domains in observe mode
    everywhere: bool = False  # every hosted domain observes: nothing to defer to RCPT for

    @property
    def defers(self) -> bool:
        """Connect-time refusals (gate, DNSBL) wait for a recipient's domain."""
        return bool(self.domains)

    def of(self, recipient: str) -> bool:
        """Whether the recipient's domain observes (a domain not hosted: enforced unless
        every domain observes; relay_denied refuses it anyway)."""
        return self.everywhere or normalise_domain(recipient.rpartition("@")[2]) in self.domains


def observed(verdict: Verdict) -> Verdict:
    """The refusal as observe mode records it: its code and text kept, never said."""
    return dataclasses.replace(verdict, action=Action.OBSERVE)
