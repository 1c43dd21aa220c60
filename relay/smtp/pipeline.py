"""Runs the filters of a stage, cheapest first, turning their failures into verdicts."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Sequence

from filters.base import Action, Context, Filter, Stage, Verdict

log = logging.getLogger("floodgate.pipeline")


def failure_verdict(f: Filter, why: str) -> Verdict | None:
    """A filter that timed out or broke: tempfail (the default) or let the message pass."""
    if f.on_error == Action.ACCEPT:
        return None
    if f.on_error == Action.REJECT:
        return Verdict.reject(554, "5.3.0", f"{f.name}_error", f"{f.name} check failed", why)
    return Verdict.tempfail(
        451, "4.3.0", f"{f.name}_error",
        f"Temporary failure in {f.name} check, try again later", why,
    )


class Pipeline:
    def __init__(self, filters: Sequence[Filter]):
        self.stages: dict[Stage, list[Filter]] = defaultdict(list)
        for f in filters:
            self.stages[f.stage].append(f)

    async def run(self, stage: Stage, ctx: Context) -> Verdict | None:
        """The first REJECT or TEMPFAIL ends the stage; otherwise the last ACCEPT (carrying
        the headers every accepting filter asked for), or None."""
        accepted: Verdict | None = None
        headers: list[tuple[str, str]] = []
        for f in self.stages.get(stage, ()):
            try:
                # asyncio.timeout, not wait_for: wait_for wraps each check in a task of its
                # own, 3% of the event loop in a dictionary attack (scripts/bench scenario 1)
                async with asyncio.timeout(f.timeout):
                    verdict = await f.check(ctx)
            except TimeoutError:
                log.warning("filter timeout filter=%s timeout=%.1fs", f.name, f.timeout)
                verdict = failure_verdict(f, "timeout")
            except Exception as e:
                log.exception("filter error filter=%s", f.name)
                verdict = failure_verdict(f, f"{type(e).__name__}: {e}")
            if verdict is None:
                continue
            if verdict.action != Action.ACCEPT:
                return verdict
            headers.extend(verdict.headers)
            accepted = verdict
        if accepted is not None and len(headers) != len(accepted.headers):
            accepted = dataclasses.replace(accepted, headers=tuple(headers))
        return accepted
