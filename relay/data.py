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
import enum
from dataclasses import dataclass, field

MAX_LINE = 998  # octets of text per line, CRLF not counted (RFC 5321 4.5.3.1.6)
END = b"\r\n.\r\n"
# Bytes scanned per turn of the event loop. The scan costs about 5 ns a byte here (bare
# CR/LF counts, line lengths, unstuffing), so 64 KB is ~0.35 ms: twenty big messages
# streaming in at once then hold a loop turn for ~7 ms, not the ~30 ms of 256 KB blocks
# that made every small session wait 100 ms a command (scripts/bench scenario 5).
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


async def read_data(reader: asyncio.StreamReader, scanner: DataScanner) -> None:
    """Read until the scanner has seen the final dot; give back what followed it.

    StreamReader has no public unread, so the bytes after the dot are put back at the
    front of its buffer (aiosmtpd itself reaches into `_buffer` for STARTTLS); the same
    buffer says whether to yield between blocks. Raises ConnectionError when the client
    goes away first.
    """
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    while True:
        chunk = await reader.read(BLOCK)
        if not chunk:
            raise ConnectionError("connection closed during DATA")
        rest = scanner.feed(chunk)
        if rest is not None:
            if rest:
                buffer[:0] = rest
            return
        if buffer:  # more is waiting: let the other clients have this turn of the loop
            await asyncio.sleep(0)
