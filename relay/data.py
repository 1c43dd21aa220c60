"""Reading DATA in blocks: end-of-data, dot-unstuffing and the line checks, at C speed.

aiosmtpd reads DATA one line at a time through a StreamReader whose limit (1001 bytes) also
pauses the socket every 2 KB; on a 20 MB message that is ~270,000 trips through Python and
the event loop stalls other clients (aiosmtpd issue #293). Here whole blocks are scanned
with bytes.find/count/replace, so the cost per byte is C's.

The rules are strict on purpose (SMTP smuggling, CVE-2023-51764 class): only
<CRLF>.<CRLF> ends the data, and a CR or LF that is not part of a CRLF pair anywhere in the
data (or a NUL, which RFC 2045 8bit data may not hold either, and which some servers drop
before looking for the dot) marks the message `bare`, to be refused whole: nothing the
next hop might split into two messages is ever queued. Lines are limited to 998 octets
plus CRLF (RFC 5321 4.5.3.1.6, the transparency dot not counted), the whole to `limit`
bytes as aiosmtpd counts them (every line before the final dot, stuffing included).
"""

from __future__ import annotations

import asyncio
import collections
import enum
from dataclasses import dataclass, field

MAX_LINE = 998  # octets of text per line, CRLF not counted (RFC 5321 4.5.3.1.6)
END = b"\r\n.\r\n"
# Bytes read and scanned at a time. The scan costs about 5 ns a byte here (bare CR/LF
# counts, line lengths, unstuffing), so a 64 KB block is ~0.35 ms of the event loop, and
# BulkTurns lets a few blocks into each turn of the loop (scripts/bench scenario 5).
BLOCK = 64 * 1024


class Problem(enum.Enum):
    NONE = "none"
    TOO_LONG = "too_long"  # a line over MAX_LINE
    TOO_MUCH = "too_much"  # over the size limit
    BARE = "bare"  # CR or LF outside a CRLF pair, or a NUL


@dataclass(slots=True)
class DataScanner:
    """Feed it the bytes after `354` as they come; it says where the data ends.

    Pure and incremental (no I/O), so the fuzzer can compare it with a line-by-line model.
    """

    limit: int | None = None
    parts: list[bytes] = field(default_factory=list)
    size: int = 0  # wire bytes before the final dot
    problem: Problem = Problem.NONE
    bare: bool = False
    done: bool = False
    _pending: bytes = b""  # the start of a line whose CRLF has not arrived yet
    _midline: bool = False  # _pending continues a line that was too long and dropped

    def feed(self, chunk: bytes) -> bytes | None:
        """Consume `chunk`; once the final dot is seen, return what followed it (the next
        pipelined commands, maybe b"") and set `done`. None means: feed more."""
        data = self._pending + chunk if self._pending else chunk
        cut = data.rfind(b"\r\n")
        if cut < 0:
            self._hold(data)
            return None
        block, rest = data[: cut + 2], data[cut + 2 :]
        self._pending = b""
        midline, self._midline = self._midline, False
        head = b""
        if midline:  # the tail of an over-long line: count it, never treat it as a line
            first = block.find(b"\r\n") + 2
            head, block = block[:first], block[first:]
            self._account(head, b"")
        if block.startswith(b".\r\n"):
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

    def content(self) -> bytes:
        """The message, unstuffed, when no problem was found."""
        return b"".join(self.parts)

    @property
    def refused(self) -> Problem:
        """What to refuse the message for; a bare CR/LF outranks the rest."""
        return Problem.BARE if self.bare else self.problem

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
        """Complete lines, starting at a line start, ending with CRLF (or empty)."""
        if not lines:
            return
        if len(lines) <= MAX_LINE:  # a short block cannot hold a long line: count only
            split = None
            crlf = lines.count(b"\r\n")
        else:  # the split gives the line count and the line lengths in one pass
            split = lines.split(b"\r\n")
            crlf = len(split) - 1
        if lines.count(b"\r") != crlf or lines.count(b"\n") != crlf or b"\0" in lines:
            self.bare = True
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

    def _account(self, wire: bytes, text: bytes) -> None:
        self.size += len(wire)
        if self.limit and self.size > self.limit:
            self._flag(Problem.TOO_MUCH)
        if self.problem is Problem.NONE and text:
            self.parts.append(text)

    def _flag(self, problem: Problem) -> None:
        if self.problem is Problem.NONE:
            self.problem = problem
            self.parts.clear()  # nothing of a refused message is kept


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
