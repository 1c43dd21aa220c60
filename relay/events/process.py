"""The event writer process: the store writes of the event stream, out of the SMTP process.

Writing a batch holds the GIL for most of its time (building parameters; the SQLite driver
releases and retakes it around every row), and a thread doing that next to the event loop
made them fight for the GIL: in a dictionary attack the writer thread cost the loop 40% of
its rate (scripts/bench scenario 2: 4,000 -> 6,300 refusals/s with the writer held back).
So each relay process starts one child (`python -m relay.events.process LEVEL`, the store
URL in its environment, never on a command line) and sends it each
batch as tuples down a pipe; the child writes them (events and rollups, one transaction)
and answers one line per batch, `ok` or `err <why>`. The parent keeps the batch until the
answer comes, so a failed write, a dead child or a store that is down loses nothing that
was buffered; the child is started again when needed.

Frames parent -> child (filters.childproc's framing, which also starts and reaps the
child): a 4-byte big-endian length, then a `marshal` of a list of
`relay.events.writer.as_row` tuples (FIELDS order, times in microseconds: only ints,
strings and None). marshal, not pickle: dumping a batch of 20,000 events held the SMTP
loop 36 ms with pickle, 9 ms with marshal, and loading costs the same; marshal is safe here
because both ends are the same interpreter and the child trusts its parent only.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import os
import queue
import sys
import threading
from collections.abc import Sequence
from typing import Any

from filters.childproc import (
    child_signals,
    how,
    module_argv,
    read_frame,
    reap,
    spawn,
    write_frame,
)

log = logging.getLogger("floodgate.events")


class WriterDown(Exception):
    """The batch was not written: the store refused it or the child went away."""


class EventProcess:
    """Parent side: one child process. Batches may be sent while earlier ones are still
    being written (the parent's marshalling overlaps the child's inserts); the child answers
    them in order, and each caller reads its own answer in turn."""

    def __init__(self, url: str, argv: Sequence[str] = ()):
        self.url = url
        self.argv = list(argv) or module_argv("relay.events.process")
        self._proc: asyncio.subprocess.Process | None = None
        self._starting = asyncio.Lock()  # two callers at once must not start two children
        # settled when the latest caller has read its answer: the next one reads after it
        self._turn: asyncio.Future[None] | None = None

    async def _start(self) -> asyncio.subprocess.Process:
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        proc = await spawn([*self.argv, level], env={
            **os.environ, "FLOODGATE_STORE_URL": self.url})  # never on a command line
        log.info("event writer started pid=%d", proc.pid)
        return proc

    async def ensure(self) -> asyncio.subprocess.Process:
        """The child, started (again) if it is not running."""
        async with self._starting:
            proc = self._proc
            if proc is not None and proc.returncode is not None:  # died between batches
                log.error("event writer process %s, starting another", how(proc.returncode))
                proc = None
            if proc is None:
                proc = self._proc = await self._start()
            return proc

    async def write(self, rows: list[tuple[Any, ...]]) -> None:
        """Write `rows`; WriterDown if they were not (the caller keeps and retries them)."""
        try:
            proc = await self.ensure()
        except OSError as e:
            raise WriterDown(f"cannot start the event writer process: {e}") from e
        assert proc.stdin is not None and proc.stdout is not None
        frame = _frame(rows)
        before, mine = self._turn, asyncio.get_running_loop().create_future()
        self._turn = mine
        try:
            write_frame(proc.stdin, frame)
            await proc.stdin.drain()
            if before is not None:
                await asyncio.shield(before)  # the answers before ours are read first
            answer = await proc.stdout.readline()
        except (ConnectionError, OSError):
            answer = b""  # the pipe broke: the child is gone
        except asyncio.CancelledError:
            # Our answer will never be read: the pipe is out of step for whoever comes
            # next, so this child serves nobody else (its batches are retried elsewhere).
            proc.kill()
            if self._proc is proc:
                self._proc = None
            raise
        finally:
            if not mine.done():
                mine.set_result(None)
        if not answer:  # say how it ended; a new one is started for the next try
            if self._proc is proc:
                self._proc = None
            raise WriterDown(f"event writer process {how(await reap(proc))}")
        text = answer.decode("utf-8", "replace").rstrip("\n")
        if text != "ok":
            raise WriterDown(text.removeprefix("err "))

    async def close(self) -> None:
        """End of input: the child finishes what it has and exits."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        await reap(proc)


def _frame(rows: list[tuple[Any, ...]]) -> bytes:
    """A batch as marshal bytes. marshal refuses subclasses of str and int (an enum member
    that reached an event field): such a batch goes as plain values instead of failing."""
    try:
        return marshal.dumps(rows)
    except ValueError:
        return marshal.dumps([tuple(map(_plain, row)) for row in rows])


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__int__(value)
    return value


def _read_batches(fd: int, batches: queue.SimpleQueue[list[tuple[Any, ...]] | None]
                  ) -> None:
    """Reader thread: take each batch off the pipe as soon as the parent sends it, so the
    parent never waits on a full pipe and the writer never waits on the parent. The parent
    has at most EventWriter.DEPTH batches in flight, which bounds the queue. None: the
    parent closed the pipe."""
    try:
        while True:
            batches.put(marshal.loads(read_frame(fd)))
    except EOFError:
        pass
    finally:
        batches.put(None)


def main() -> None:
    """Child side: read batches from stdin until it closes, write each, answer each."""
    child_signals()  # the parent closes stdin after its last batch
    from sqlalchemy.exc import SQLAlchemyError

    from relay.events.record import write_rows
    from relay.logs import setup
    from relay.store.database import describe, make_engine

    if not logging.getLogger().handlers:  # else started through relay.logs, set up already
        setup(sys.argv[1] if len(sys.argv) > 1 else "INFO")
    engine = make_engine(os.environ["FLOODGATE_STORE_URL"])
    out = sys.stdout.buffer
    batches: queue.SimpleQueue[list[tuple[Any, ...]] | None] = queue.SimpleQueue()
    threading.Thread(target=_read_batches, args=(sys.stdin.fileno(), batches),
                     name="read-batches", daemon=True).start()
    while (rows := batches.get()) is not None:
        try:
            with engine.begin() as conn:
                write_rows(conn, rows)
            answer = "ok"
        except (SQLAlchemyError, OSError) as e:
            answer = "err " + describe(e).replace("\n", " ")
        out.write(answer.encode() + b"\n")
        out.flush()
    engine.dispose()


if __name__ == "__main__":
    main()
