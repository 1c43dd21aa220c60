"""Big-buffer work (the MIME split of a 20 MB message) out of the relay process.

The split of a big message (base64 decoding, CR stripping and hashing, slice by slice) is
many C calls that each hold the GIL. Done in threads it starved the event loop: one thread
per message stalled it for 1.0 s (scripts/bench scenario 5, 20 x 20 MB at once), one shared
thread still held the GIL 40% of the time and every small session's command waited for it.
So it runs in a child process (`python -m filters.offload`), fed through a pipe by the
event loop itself (C-level writes, no thread, no pickling of the message). One child, one
message at a time, at nice 10: the split is bulk work, and twenty of them must not take
every core from the SMTP loop. The child exits when its stdin closes, so it never outlives
the relay (multiprocessing's forkserver did, after a SIGKILL).

Small messages come here too when their structure would cost the loop more than its
budget (filters.mime.INLINE_STEPS: thousands of parts or header lines, or a fallback to the
email package); those come back with their payloads, for the attribution scans.

Frames both ways (filters.childproc's, which also starts and reaps the child): one byte
saying what to compute, DIGESTS or PARTS, and the message one way; a pickle of the result
the other. The child trusts its parent only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from filters.childproc import (
    LENGTH,
    child_signals,
    module_argv,
    read_frame,
    read_frame_async,
    reap,
    spawn,
    write_frame,
)

if TYPE_CHECKING:
    from filters.mime import Parts

log = logging.getLogger("floodgate.offload")

DIGESTS = b"D"  # filters.mime.split_digests: no payloads (a big message)
PARTS = b"P"  # filters.mime.split_parts: with payloads (a small, complex message)


class SplitProcess:
    """Parent side: the child, started on demand (or early, `start`), one call at a time."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._turn = asyncio.Lock()

    async def start(self) -> asyncio.subprocess.Process:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            proc = self._proc = await spawn(module_argv("filters.offload"))
        return proc

    async def split_digests(self, message: bytes) -> Parts:
        """`filters.mime.split_digests(message)`, computed by the child."""
        return await self._split(DIGESTS, message)

    async def split_parts(self, message: bytes) -> Parts:
        """`filters.mime.split_parts(message)` (payloads too), computed by the child."""
        return await self._split(PARTS, message)

    async def _split(self, what: bytes, message: bytes) -> Parts:
        """If the child dies (twice), the split runs in a thread instead: slower for the
        loop, but mail flows."""
        async with self._turn:
            for attempt in (1, 2):
                proc = await self.start()
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    write_frame(proc.stdin, what, message)
                    await proc.stdin.drain()
                    return pickle.loads(await read_frame_async(proc.stdout))  # type: ignore[no-any-return]
                except asyncio.CancelledError:  # mid-exchange: the pipe is out of step now
                    self._proc = None
                    proc.kill()
                    raise
                except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
                    self._proc = None
                    status = await reap(proc)
                    log.error("split process gone, starting another attempt=%d status=%s "
                              "error=%s", attempt, status, type(e).__name__)
        return await asyncio.to_thread(_SPLITS[what], message)

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            proc.stdin.close()
            await reap(proc)


_SPLITTER = SplitProcess()


def _split_digests(message: bytes) -> Parts:
    from filters.mime import split_digests
    return split_digests(message)


def _split_parts(message: bytes) -> Parts:
    from filters.mime import split_parts
    return split_parts(message)


_SPLITS: dict[bytes, Callable[[bytes], Parts]] = {DIGESTS: _split_digests, PARTS: _split_parts}


async def start_worker() -> None:
    """Start the child with the relay (starting it on the first big message held the loop
    for ~75 ms with multiprocessing; a subprocess is cheaper, but why wait)."""
    await _SPLITTER.start()


async def split_in_process(message: bytes) -> Parts:
    return await _SPLITTER.split_digests(message)


async def split_parts_in_process(message: bytes) -> Parts:
    return await _SPLITTER.split_parts(message)


def main() -> None:
    """Child side: split each message that arrives on stdin, answer on stdout, until EOF."""
    child_signals()
    os.nice(10)
    stdin, out = sys.stdin.fileno(), sys.stdout.buffer
    while True:
        try:
            frame = read_frame(stdin)
        except EOFError:
            break
        split = _SPLITS[frame[:1]]
        answer = pickle.dumps(split(frame[1:]), protocol=pickle.HIGHEST_PROTOCOL)
        out.write(LENGTH.pack(len(answer)) + answer)
        out.flush()


if __name__ == "__main__":
    main()
