"""The pipeline turns a filter that hangs or breaks into its on_error verdict."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from filters.base import Action, Context, Stage, Verdict
from filters.failure import FailurePolicy
from relay.smtp.pipeline import Pipeline


@dataclass
class Named:
    name: str = "stuck"
    stage: Stage = Stage.RCPT
    timeout: float = 0.05
    on_error: FailurePolicy = field(
        default_factory=lambda: FailurePolicy("stuck", stage=Stage.RCPT))


@dataclass
class Stuck(Named):
    """A filter whose check never answers (a scanner that hangs), or raises."""

    fail: bool = False
    cancelled: bool = False

    async def check(self, ctx: Context) -> Verdict | None:
        if self.fail:
            raise OSError("scanner went away")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return None


class Accepting(Named):
    async def check(self, ctx: Context) -> Verdict | None:
        return Verdict.accept(250, "2.1.5", "ok", "OK")


def run(*filters: object) -> Verdict | None:
    return asyncio.run(Pipeline(filters).run(Stage.RCPT, Context(client="192.0.2.1")))  # type: ignore[arg-type]


def test_a_check_that_hangs_is_cut_off_at_its_timeout_and_tempfails() -> None:
    stuck = Stuck()
    verdict = run(stuck, Accepting())
    assert verdict is not None
    assert (verdict.action, verdict.code, verdict.reason) == (Action.TEMPFAIL, 451, "stuck_error")
    assert verdict.detail == "timeout after 0.05s"
    assert stuck.cancelled  # the hung check was cancelled, not left running


def test_on_error_accept_lets_the_next_filter_decide() -> None:
    verdict = run(Stuck(on_error=FailurePolicy("stuck", Action.ACCEPT, Stage.RCPT)), Accepting())
    assert verdict is not None and verdict.reason == "ok"


def test_a_check_that_raises_tempfails_with_the_error() -> None:
    verdict = run(Stuck(fail=True), Accepting())
    assert verdict is not None and verdict.action == Action.TEMPFAIL
    assert verdict.detail == "OSError: scanner went away"
