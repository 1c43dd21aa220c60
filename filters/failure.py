"""What a check's failure becomes: the one owner of `on_error` (maddy's FailAction).

A check fails when it cannot give a verdict: its service is down, hangs, answers nonsense,
or the check itself raises. Both places that see failures go through the check's one
FailurePolicy: the check for what it catches itself (clamd refused, spamd timed out), the
pipeline for what escapes it (an unexpected exception, the pipeline's own timeout). So a
failure answers the same whichever of them saw it.

TEMPFAIL is `451 4.3.0`. RFC 3463 X.3.0, "other or undefined mail system status", is the
receiving system saying something about itself is wrong; a scanner that cannot scan is
exactly that, and it is what the relay says for its other internal faults (a failed spool
write, an exception in a hook). X.7.1 ("delivery not authorized, message refused") says the
sender is not allowed, which a scanner outage knows nothing about, and X.5.0 (amavisd-new's
"Error in processing") is a protocol status. One code for "not scanned, try later" also
covers the tempfail choices of `on_oversize` and `on_limits`: the sender can do nothing
about any of them but come back.

ACCEPT after DATA lets the message through with an `X-Floodgate-Unscanned: <check> (<why>)`
header, always, so a failure is never taken for a clean scan downstream. ACCEPT before DATA
has no message to mark: the check has no opinion and the next one decides (at RCPT that is
never an acceptance by itself: the relay refuses a recipient no check accepted).
"""

from __future__ import annotations

from dataclasses import dataclass

from filters.base import Action, Stage, Verdict

UNSCANNED_HEADER = "X-Floodgate-Unscanned"
TEMPFAIL_CODE = 451
TEMPFAIL_STATUS = "4.3.0"


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """`on_error` of one check. `check` names it in reasons (`clamav_error`,
    `clamav_unscanned`) and in the header; `what` in the reply text ("virus scan")."""

    check: str
    action: Action = Action.TEMPFAIL
    stage: Stage = Stage.DATA
    what: str = ""

    def __post_init__(self) -> None:
        if self.action not in (Action.TEMPFAIL, Action.ACCEPT):
            raise ValueError("on_error must be TEMPFAIL or ACCEPT")
        if not self.what:
            object.__setattr__(self, "what", f"{self.check} check")

    def failed(self, why: str) -> Verdict | None:
        """The verdict for a check that could not give one: on_error's choice."""
        if self.action == Action.TEMPFAIL:
            return self.tempfail(why)
        if self.stage != Stage.DATA:
            return None
        return self.unscanned(why)

    def tempfail(self, why: str, reason: str = "", text: str = "") -> Verdict:
        """`451 4.3.0`: not checked now; `reason` and `text` for a cause of the check's own
        (a message over the scanner's size limit) instead of "it failed"."""
        return Verdict.tempfail(
            TEMPFAIL_CODE, TEMPFAIL_STATUS, reason or f"{self.check}_error",
            text or f"Temporary failure in {self.what}, try again later", detail=why)

    def unscanned(self, why: str, reason: str = "", text: str = "") -> Verdict:
        """ACCEPT marked with the header that says which check did not look, and why."""
        return Verdict.accept(
            250, "2.0.0", reason or f"{self.check}_unscanned",
            text or f"Accepted without {self.what}", detail=why,
            headers=((UNSCANNED_HEADER, f"{self.check} ({why})"),))
