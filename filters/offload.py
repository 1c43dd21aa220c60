"""Big-buffer work (joining, parsing, rewriting a 20 MB message) off the event loop.

A thread holding the GIL in a long C call (one `a2b_base64` of 20 MB, one `bytes.join`)
stalls the loop for that long, and twenty such threads at once starve it for seconds
(aiosmtpd issue #293 territory). So this work goes to one thread: twenty big messages queue
here instead of all contending for the GIL with the loop. Measured (scripts/bench scenario
5, 20 x 20 MB): longest loop stall 1.0 s with a thread per message, 0.31 s with two
threads, 0.16 s with one, and the twenty messages were done sooner with one.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bigwork")


async def off_loop(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` in the big-work thread."""
    return await asyncio.get_running_loop().run_in_executor(_POOL, functools.partial(fn, *args))
