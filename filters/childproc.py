"""Child-process plumbing: start a `python -m module` child on pipes, frame what goes
down them, and reap the child.

Two children use it: the MIME split (filters.offload) and the event writer
(relay.events.process). Both exist to take GIL-heavy work off the SMTP loop, and both follow
the same contract, kept here once: the child is started with sys.executable (so both ends
are the same interpreter), it trusts its parent only (its stdin is a pipe), it ignores
SIGINT and SIGTERM and exits when its stdin closes, so it never outlives its parent and the
parent decides when it stops. It lives in filters/ because filters import nothing of the
relay's, and relay modules may import filters.

Frames: a 4-byte big-endian length, then the bytes. Each child chooses what its answers
are (the split answers in frames, the event writer one line per batch).
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
from collections.abc import Mapping

LENGTH = struct.Struct(">I")
_launcher: list[str] = []


def launch_through(launcher: list[str]) -> None:
    """Start children as `python -m LAUNCHER... MODULE` from now on: the relay's logging
    set-up (relay.logs) runs its children through itself so they log as it does; filters
    cannot import it, so it tells us."""
    _launcher[:] = launcher


def module_argv(module: str) -> list[str]:
    """The command line of a child running `module` under this interpreter."""
    return [sys.executable, "-m", *_launcher, module]


async def spawn(argv: list[str], env: Mapping[str, str] | None = None
                ) -> asyncio.subprocess.Process:
    """Start a child with its stdin and stdout as pipes to us (stderr stays ours: the log)."""
    return await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env=None if env is None else dict(env))


def write_frame(stream: asyncio.StreamWriter, *parts: bytes) -> None:
    """One frame holding `parts` end to end, written piece by piece (a 20 MB message is not
    copied to be framed); the caller drains."""
    stream.write(LENGTH.pack(sum(len(part) for part in parts)))
    for part in parts:
        stream.write(part)


async def read_frame_async(stream: asyncio.StreamReader) -> bytes:
    """Parent side: one frame from a child's stdout (IncompleteReadError if it died)."""
    (size,) = LENGTH.unpack(await stream.readexactly(LENGTH.size))
    return await stream.readexactly(size)


async def reap(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> int:
    """The exit status of a child told to stop (its stdin closed), killed if it lingers."""
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        return await proc.wait()


def how(status: int) -> str:
    """A child's exit status in words, for the log."""
    return f"killed by signal {-status}" if status < 0 else f"exited with status {status}"


# -- child side --------------------------------------------------------------------------


def child_signals() -> None:
    """The parent ends the child by closing its stdin: Ctrl-C and the supervisor's SIGTERM
    reach the whole process group, and must not cut a child's answer in half."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def read_frame(fd: int) -> bytes:
    """One length-prefixed frame from `fd` (a child's stdin); EOFError at end of input."""
    (size,) = LENGTH.unpack(read_exact(fd, LENGTH.size))
    return read_exact(fd, size)


def read_exact(fd: int, n: int) -> bytes:
    """`n` bytes from `fd`; EOFError at end of input."""
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, min(n - len(out), 1 << 20))
        if not chunk:
            raise EOFError
        out += chunk
    return bytes(out)
