"""The one loop that polls the store: snapshots, scoring and retention all run on it.

A store outage must neither stop the relay nor fill its log: the step fails, the loop logs
that once (with the store's own words, `describe`), keeps the last good state, tries again
every interval, and says so once when the store answers again. Cancelling the task stops it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from relay.logs import kv
from relay.store.database import describe, in_store_thread


async def poll_every(interval: float, step: Callable[[], Any], *, logger: str, failed: str,
                     recovered: str, first: bool = False,
                     context: Callable[[], dict[str, object]] | None = None) -> None:
    """Run `step` every `interval` seconds (`first`: at once, then every interval).

    `step` is a coroutine function, awaited on the loop, or a plain function, run on the
    store's threads so the event loop never waits for the database. `failed` is logged at
    the first failure of an outage with the error (and `context()`'s fields), `recovered` at
    the first success after one.
    """
    log = logging.getLogger(logger)
    run: Callable[[], Awaitable[Any]] = (step if inspect.iscoroutinefunction(step)
                                          else lambda: in_store_thread(step))
    failing = False
    if not first:
        await asyncio.sleep(interval)
    while True:
        try:
            await run()
        except Exception as e:
            if not failing:
                fields = context() if context is not None else {}
                log.error("%s %s", failed, kv(**fields, error=describe(e)))
                failing = True
        else:
            if failing:
                log.warning("%s", recovered)
                failing = False
        await asyncio.sleep(interval)
