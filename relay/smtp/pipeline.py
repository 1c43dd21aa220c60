"""Runs the filters of a stage, cheapest first. A filter that raises or outlives its timeout
gets its own `on_error` verdict (filters/failure.py), the same one it gives for the failures
it catches itself."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Sequence

from filters.base import Action, Context, Filter, Stage, Verdict

log = logging.getLogger("floodgate.pipeline")


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
                verdict = f.on_error.failed(f"timeout after {f.timeout:g}s")
            except Exception as e:
                log.exception("filter error filter=%s", f.name)
                verdict = f.on_error.failed(f"{type(e).__name__}: {e}")
            if verdict is None:
                continue
            if verdict.action != Action.ACCEPT:
                return verdict
            headers.extend(verdict.headers)
            accepted = verdict
        if accepted is not None and len(headers) != len(accepted.headers):
            accepted = dataclasses.replace(accepted, headers=tuple(headers))
        return accepted
