"""Reading DATA in blocks: end-of-data, dot-unstuffing and the line checks, at C speed.

aiosmtpd reads DATA one line at a time through a StreamReader whose limit (1001 bytes) also
pauses the socket every 2 KB; on a 20 MB message that is ~270,000 trips through Python and
the event loop stalls other clients (aiosmtpd issue #293). Here whole blocks are scanned
with bytes.find/count/replace, so the cost per byte is C's.

Only <CRLF>.<CRLF> ends the data (SMTP smuggling, CVE-2023-51764 class), in both modes of
`[limits] bare_newline`, which are Postfix's `smtpd_forbid_bare_newline`:

- "normalize" (Postfix 3.9's default): a bare LF, or a bare CR, ends a line as CRLF would,
  and the message is stored with CRLF only. A "." line next to a bare line ending is
  dropped, as Postfix drops it (it is nobody's content, only a smuggler's or a broken
  client's end-of-data); other lines lose their transparency dot as usual. Delivery
  dot-stuffs what it sends, so nothing in the stored message can end the next hop's DATA.
  Postfix keeps a bare CR as a byte; our delivery client (aiosmtplib) turns it into CRLF
  anyway, so it is done here, where the filters see what will be sent.
- "reject": a CR or LF outside a CRLF pair marks the message `bare`, refused whole.

A NUL is refused in both modes (RFC 2045 8bit data may not hold one, and some servers drop
it before they look for the dot: `<CRLF>NUL.<CRLF>` would end their DATA). Lines are
limited to 998 octets plus CRLF (RFC 5321 4.5.3.1.6, the transparency dot not counted), the
whole to `limit` bytes as aiosmtpd counts them (every line before the final dot, stuffing
included).

What is read is kept in a `Body`: in memory up to a per-message threshold and while the
process-wide `Budget` allows, then in a file in the spool's tmp/ (issue #16: forty clients
holding 20 MB each without the final dot cost 850 MB of RSS, never returned).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MAX_LINE = 998  # octets of text per line, CRLF not counted (RFC 5321 4.5.3.1.6)
END = b"\r\n.\r\n"
# Bytes read and scanned at a time. The scan costs about 5 ns a byte here (bare CR/LF
# counts, line lengths, unstuffing), so a 64 KB block is ~0.35 ms of the event loop, and
# BulkTurns lets a few blocks into each turn of the loop (scripts/bench scenario 5).
BLOCK = 64 * 1024
BareNewline = Literal["normalize", "reject"]
# In normalize mode: one transparency dot at a line start (after LF or a bare CR), and with
# it the line ending when the line is "." alone (such a line is never the real end here).
_DOT = re.compile(rb"(?<=[\r\n])\.(?:\r\n|\r|\n)?")
_LINE_END = re.compile(rb"\r\n|\r|\n")
SPILL_PREFIX = "data-"  # spill files in the spool's tmp/: cleared with it at start


class Problem(enum.Enum):
    NONE = "none"
    TOO_LONG = "too_long"  # a line over MAX_LINE
    TOO_MUCH = "too_much"  # over the size limit
    BARE = "bare"  # reject mode: CR or LF outside a CRLF pair, or a NUL
    NUL = "nul"  # normalize mode: a NUL


class Budget:
    """Bytes of DATA held in memory by all sessions of the process together (one per
    RelayHandler: each worker process has its own)."""

    def __init__(self, total: int):
        self.total = total
        self.held = 0

    def take(self, n: int) -> bool:
        if self.held + n > self.total:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n


class Body:
    """A message's text as it is read: in memory up to `in_memory` bytes while `budget`
    allows, then (everything, from then on) in a file in `spill_dir`. Without `spill_dir`
    all of it stays in memory (the fuzzer's pure scanner). `close()` frees both, on every
    path; the relay clears the directory at start for a crash."""

    def __init__(self, spill_dir: Path | None = None, in_memory: int = 0,
                 budget: Budget | None = None):
        self.spill_dir = spill_dir
        self.in_memory = in_memory
        self.budget = budget
        self.parts: list[bytes] = []
        self.size = 0  # bytes of text, in memory or in the file
        self.path: Path | None = None
        self._held = 0  # of self.parts, taken from the budget
        self._fd: int | None = None

    @property
    def spilled(self) -> bool:
        return self._fd is not None

    def append(self, text: bytes) -> None:
        self.size += len(text)
        if self._fd is None and not self._keep(len(text)):
            self._spill()
        if self._fd is not None:
            _write_all(self._fd, text)
        else:
            self.parts.append(text)

    def _keep(self, n: int) -> bool:
        if self.spill_dir is None:
            return True
        if self._held + n > self.in_memory:
            return False
        if self.budget is not None and not self.budget.take(n):
            return False
        self._held += n
        return True

    def _spill(self) -> None:
        assert self.spill_dir is not None
        self.path = self.spill_dir / f"{SPILL_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        for part in self.parts:
            _write_all(self._fd, part)
        self._release()

    def _release(self) -> None:
        self.parts.clear()
        if self.budget is not None:
            self.budget.give(self._held)
        self._held = 0

    def clear(self) -> None:
        """Nothing of a refused message is kept (the file is emptied, not yet removed)."""
        self._release()
        self.size = 0
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)

    def content(self) -> bytes:
        """The whole text; from the file when it spilled (in a thread: it may be large)."""
        if self._fd is None:
            return b"".join(self.parts)
        chunks = []
        done = 0
        while done < self.size:
            chunk = os.pread(self._fd, self.size - done, done)
            if not chunk:
                raise OSError(f"spill file {self.path} is short")
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    def close(self) -> None:
        self._release()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            assert self.path is not None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@dataclass(slots=True)
class DataScanner:
    """Feed it the bytes after `354` as they come; it says where the data ends.

    Pure and incremental (no I/O unless its `body` spills), so the fuzzer can compare it
    with a line-by-line model.
    """

    limit: int | None = None
    bare_newline: BareNewline = "reject"
    body: Body = field(default_factory=Body)
    size: int = 0  # wire bytes before the final dot
    problem: Problem = Problem.NONE
    bare: bool = False
    nul: bool = False
    done: bool = False
    _pending: bytes = b""  # the start of a line whose line ending has not arrived yet
    _midline: bool = False  # _pending continues a line that was too long and dropped
    _after_bare: bool = False  # the last line ending taken was a bare CR or LF

    @property
    def parts(self) -> list[bytes]:
        """What is held in memory."""
        return self.body.parts

    def feed(self, chunk: bytes) -> bytes | None:
        """Consume `chunk`; once the final dot is seen, return what followed it (the next
        pipelined commands, maybe b"") and set `done`. None means: feed more."""
        data = self._pending + chunk if self._pending else chunk
        cut = self._cut(data)
        if cut < 0:
            self._hold(data)
            return None
        block, rest = data[:cut], data[cut:]
        self._pending = b""
        midline, self._midline = self._midline, False
        if midline:  # the tail of an over-long line: count it, never treat it as a line
            first = _LINE_END.search(block) if self.bare_newline == "normalize" else None
            stop = first.end() if first is not None else block.find(b"\r\n") + 2
            head, block = block[:stop], block[stop:]
            self._after_bare = not head.endswith(b"\r\n")
            self._account(head, b"")
        if block.startswith(b".\r\n") and not self._after_bare:
            end = 0
        else:
            end = block.find(END)
            end = -1 if end < 0 else end + 2
        if end >= 0:
            self._take(block[:end])
            self.done = True
            return block[end + 3 :] + rest
        self._take(block)
        self._hold(rest)
        return None

    def _cut(self, data: bytes) -> int:
        """Where the complete lines end: after the last CRLF; in normalize mode after the
        last LF or bare CR (a CR at the very end may be the first half of a CRLF)."""
        if self.bare_newline == "reject":
            cut = data.rfind(b"\r\n")
            return cut if cut < 0 else cut + 2
        return max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1 or -1

    def content(self) -> bytes:
        """The message, unstuffed, when no problem was found."""
        return self.body.content()

    @property
    def refused(self) -> Problem:
        """What to refuse the message for; a bare CR/LF or a NUL outranks the rest."""
        if self.bare:
            return Problem.BARE
        return Problem.NUL if self.nul else self.problem

    def _hold(self, partial: bytes) -> None:
        """Keep a partial line; a line longer than any legal one is dropped as it comes
        (only its last byte is kept, it may be the CR of the CRLF)."""
        if len(partial) > MAX_LINE + 3:
            self._flag(Problem.TOO_LONG)
            self._account(partial[:-1], b"")
            self._pending = partial[-1:]
            self._midline = True
        else:
            self._pending = partial

    def _take(self, lines: bytes) -> None:
        """Complete lines, starting at a line start, ending with a line ending (or empty)."""
        if not lines:
            return
        after_bare, self._after_bare = self._after_bare, not lines.endswith(b"\r\n")
        crlf = lines.count(b"\r\n")
        clean = lines.count(b"\r") == crlf and lines.count(b"\n") == crlf
        if b"\0" in lines:
            if self.bare_newline == "reject":
                self.bare = True
            else:
                self.nul = True
        if self.bare_newline == "reject":
            if not clean:
                self.bare = True
        elif not clean or after_bare:
            self._normalize(lines, after_bare)
            return
        # a short block cannot hold a long line; else the split gives the line lengths
        split = None if len(lines) <= MAX_LINE else lines.split(b"\r\n")
        if self.problem is Problem.NONE and len(lines) - 2 * crlf > MAX_LINE:
            # only possibly too long when the block could hold such a line at all
            assert split is not None
            longest = max(map(len, split))
            if longest > MAX_LINE + 1 or (longest == MAX_LINE + 1 and any(
                    len(x) > MAX_LINE and not x.startswith(b".") for x in split)):
                self._flag(Problem.TOO_LONG)
        unstuffed = b""
        if self.problem is Problem.NONE:
            unstuffed = lines.replace(b"\r\n.", b"\r\n")
            if unstuffed.startswith(b"."):
                unstuffed = unstuffed[1:]
        self._account(lines, unstuffed)

    def _normalize(self, lines: bytes, after_bare: bool) -> None:
        """Normalize mode, for lines with a bare CR or LF (or right after one): unstuff,
        drop "." lines, end every line with CRLF; in C, a few passes over the block."""
        text = b""
        if self.problem is Problem.NONE:
            lead = b"\n" if after_bare else b"\r\n"  # the line ending before the block
            text = _DOT.sub(b"", lead + lines)[len(lead):]
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
            if len(text) - 2 * text.count(b"\r\n") > MAX_LINE and \
                    max(map(len, text.split(b"\r\n"))) > MAX_LINE:
                self._flag(Problem.TOO_LONG)
        self._account(lines, text)

    def _account(self, wire: bytes, text: bytes) -> None:
        self.size += len(wire)
        if self.limit and self.size > self.limit:
            self._flag(Problem.TOO_MUCH)
        if self.problem is Problem.NONE and text:
            self.body.append(text)

    def _flag(self, problem: Problem) -> None:
        if self.problem is Problem.NONE:
            self.problem = problem
            self.body.clear()  # nothing of a refused message is kept


class BulkTurns:
    """At most `per_turn` blocks of bulk DATA scanned per turn of the event loop.

    Twenty 20 MB messages streaming in at once each had a block ready on nearly every
    turn, so a turn held twenty blocks' scans (and their reads) and a small session waited
    that long for each of its commands. With four blocks a turn the others wait in their
    sockets (TCP pushes back on their senders): scripts/bench scenario 5, the small
    sessions' p99 went from about 230 ms to 55-75 ms, and the twenty big messages took
    about 1.1x as long (eight a turn: 111 ms; two: 71 ms and 1.15x). The first block of a
    message is never held, so a small message never waits for a big one. Futures are made
    on the running loop when needed, so one instance serves any loop.
    """

    def __init__(self, per_turn: int = 4):
        self.per_turn = per_turn
        self._left = per_turn
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._armed = False

    async def take(self) -> None:
        """Return when this turn may scan one more block."""
        if self._left > 0 and not self._waiting:
            self._left -= 1
            self._arm()
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        self._arm()
        await fut

    def _arm(self) -> None:
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """The next turn's budget: the oldest waiters first."""
        self._armed = False
        self._left = self.per_turn
        while self._left and self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():  # a reader cancelled while waiting takes nothing
                fut.set_result(None)
                self._left -= 1
        if self._waiting:
            self._arm()


BULK = BulkTurns()


async def read_data(reader: asyncio.StreamReader, scanner: DataScanner,
                    turns: BulkTurns = BULK) -> None:
    """Read until the scanner has seen the final dot; give back what followed it.

    StreamReader has no public unread, so the bytes after the dot are put back at the
    front of its buffer (aiosmtpd itself reaches into `_buffer` for STARTTLS). Every block
    after the first takes its turn from `turns`. Raises ConnectionError when the client
    goes away first.
    """
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    first = True
    while True:
        chunk = await reader.read(BLOCK)
        if not chunk:
            raise ConnectionError("connection closed during DATA")
        if not first:
            await turns.take()
        first = False
        rest = scanner.feed(chunk)
        if rest is not None:
            if rest:
                buffer[:0] = rest
            return
