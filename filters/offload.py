"""Big-buffer work (the MIME split of a 20 MB message) out of the relay process.

The split of a big message (base64 decoding, CR stripping and hashing, slice by slice) is
many C calls that each hold the GIL. Done in threads it starved the event loop: one thread
per message stalled it for 1.0 s (scripts/bench scenario 5, 20 x 20 MB at once), one shared
thread still held the GIL 40% of the time and every small session's command waited for it.
So it runs in one worker process; only pickling the argument (one copy, ~15 ms for 20 MB,
in multiprocessing's feeder thread) touches this process's GIL. One worker: the split is
bulk work, and twenty of them at once must not take every core from the SMTP loop (the
worker also runs at nice 10 for that reason).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

log = logging.getLogger("floodgate.offload")

T = TypeVar("T")

_PROCESS: ProcessPoolExecutor | None = None


def _process_pool() -> ProcessPoolExecutor:
    global _PROCESS
    if _PROCESS is None:
        # forkserver: the worker starts from a clean process, not a fork of a threaded relay
        _PROCESS = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("forkserver"),
            initializer=os.nice, initargs=(10,))
    return _PROCESS


async def start_worker() -> None:
    """Start the worker now (from a thread): starting it on first use held the loop for
    ~75 ms, the longest stall left in scenario 5."""
    await asyncio.to_thread(lambda: _process_pool().submit(os.getpid).result())


async def in_process(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` in the big-work process (a module-level function, picklable arguments
    and result). A worker that died (OOM killer) is replaced and the call tried once more."""
    global _PROCESS
    loop = asyncio.get_running_loop()
    for attempt in (1, 2):
        pool = _process_pool()
        try:
            return await loop.run_in_executor(pool, functools.partial(fn, *args))
        except BrokenProcessPool:
            if _PROCESS is pool:
                _PROCESS = None
            pool.shutdown(wait=False, cancel_futures=True)
            log.error("big-work process died, starting another attempt=%d", attempt)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
