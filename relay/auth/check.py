"""All of a message's authentication at once: SPF, DKIM and ARC concurrently, then DMARC
from their results, then what Floodgate does about it.

What happens to a DMARC failure: p=reject gets the hosted domain's `dmarc_reject`
("reject": 550 5.7.1 in the session, "tag", "none"); p=quarantine is tagged; a failure a
trusted ARC sealer vouches for (its chain passes and it sealed last) is only recorded. A
temperror anywhere is never a refusal: the message is accepted and the result recorded,
as opendmarc does for a DNS failure (Postfix's milter_default_action = accept).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from relay.auth.arc import verify_arc
from relay.auth.dkim import verify_dkim
from relay.auth.dmarc import DmarcResult, check_dmarc
from relay.auth.resolver import Resolver
from relay.auth.spf import check_spf
from relay.auth.verdicts import ArcResult, DkimResult, SpfResult
from relay.reasons import Reason

log = logging.getLogger("floodgate.auth")

Action = Literal["reject", "tag", "none"]
_STRICTNESS = {"none": 0, "tag": 1, "reject": 2}


@dataclass(frozen=True)
class AuthReport:
    client: str
    mail_from: str
    spf: SpfResult
    dmarc: DmarcResult
    dkim: tuple[DkimResult, ...] = ()
    arc: ArcResult = field(default_factory=lambda: ArcResult("none"))
    arc_override: str = ""  # the trusted sealer whose chain overrides the DMARC failure

    def findings(self) -> list[Reason]:
        """The event reasons this message earns (reasons.py), in a fixed order."""
        found = []
        if self.spf.result == "fail":
            found.append(Reason.SPF_FAIL)
        elif self.spf.result == "softfail":
            found.append(Reason.SPF_SOFTFAIL)
        if any(d.result == "fail" for d in self.dkim):
            found.append(Reason.DKIM_FAIL)
        if self.dmarc.result == "fail":
            if self.dmarc.policy == "reject":
                found.append(Reason.DMARC_REJECT)
            elif self.dmarc.policy == "quarantine":
                found.append(Reason.DMARC_QUARANTINE)
        return found

    def action(self, reject_action: Action) -> Action:
        """What the relay does: `reject_action` for a p=reject failure, "tag" for
        quarantine, "none" for the rest (a pass, no policy, a temperror, an ARC override)."""
        if self.dmarc.result != "fail" or self.arc_override:
            return "none"
        if self.dmarc.policy == "reject":
            return reject_action
        return "tag" if self.dmarc.policy == "quarantine" else "none"

    def summary(self) -> str:
        """One line for events and logs."""
        dkim = ",".join(f"{d.result}:{d.domain}" for d in self.dkim) or "none"
        text = (f"from={self.dmarc.from_domain or '-'} spf={self.spf.result} dkim={dkim} "
                f"dmarc={self.dmarc.result} arc={self.arc.result}")
        if self.dmarc.result == "fail":
            text += f" policy={self.dmarc.policy}"
        if self.arc_override:
            text += f" arc_override={self.arc_override}"
        return text


def strictest(actions: Iterable[Action]) -> Action:
    """A message to several hosted domains gets the strictest of their actions."""
    return max(actions, key=_STRICTNESS.__getitem__, default="reject")


async def _dkim(message: bytes, resolver: Resolver) -> list[DkimResult]:
    try:
        return await verify_dkim(message, resolver.txt)
    except Exception as e:  # a verifier bug must not cost the message
        log.exception("dkim verification failed")
        return [DkimResult("temperror", "", "", reason=f"{type(e).__name__}")]


async def _arc(message: bytes, resolver: Resolver) -> ArcResult:
    try:
        return await verify_arc(message, resolver.txt)
    except Exception as e:
        log.exception("arc verification failed")
        return ArcResult("none", reason=f"not verified: {type(e).__name__}")


async def authenticate(message: bytes, client: str, helo: str, mail_from: str,
                       resolver: Resolver, trusted_sealers: Iterable[str] = (),
                       sample: float | None = None) -> AuthReport:
    """Every check for one message; never raises for DNS (temperror results instead)."""
    spf, dkim, arc = await asyncio.gather(
        check_spf(resolver, client, mail_from, helo), _dkim(message, resolver),
        _arc(message, resolver))
    dmarc = await check_dmarc(message, spf, dkim, resolver.txt, sample=sample)
    override = ""
    trusted = {s.lower().rstrip(".") for s in trusted_sealers}
    if (dmarc.result == "fail" and arc.result == "pass" and arc.sealers
            and arc.sealers[0].lower().rstrip(".") in trusted):
        override = arc.sealers[0]
    return AuthReport(client=client, mail_from=mail_from.strip().strip("<>"), spf=spf,
                      dmarc=dmarc, dkim=tuple(dkim), arc=arc, arc_override=override)
