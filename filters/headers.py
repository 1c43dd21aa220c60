"""Header surgery on raw message bytes: strip forged fields, prepend ours, body untouched.

The relay spools exactly what it received plus its own trace and scan headers, so these work
on bytes (never re-serialise through the email package, which rewrites folding and line
endings) and keep the message's own line ending (CRLF from SMTP, LF from a file on disk).
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence

# Sender-supplied copies of the headers the scanners vouch for: a spammer writing
# "X-Spam-Flag: NO" must not be believed downstream, nor a forged "not scanned" note.
STRIP_PREFIXES: tuple[str, ...] = ("x-spam-", "x-floodgate-")

FOLD_AT = 76
# Postfix's header_size_limit default: bytes of one header field, folded lines included.
HEADER_SIZE_LIMIT = 100 * 1024


def head_end(message: bytes) -> int:
    """Where the header block ends (after its last line ending); len(message) if it never
    does. The first "\r\n\r\n" or "\n\n"; the second search stops where the first
    matched, so a 20 MB body is not scanned twice."""
    if message.startswith((b"\r\n", b"\n")):
        return 0
    crlf = message.find(b"\r\n\r\n")
    lf = message.find(b"\n\n", 0, len(message) if crlf < 0 else crlf + 2)
    if crlf < 0 and lf < 0:
        return len(message)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf + 1
    return crlf + 2


def split_head(message: bytes) -> tuple[bytes, bytes]:
    """(header block including its last line ending, everything from the blank line on)."""
    cut = head_end(message)
    return message[:cut], message[cut:]


def line_ending(message: bytes) -> bytes:
    first = message.find(b"\n")
    return b"\r\n" if first > 0 and message[first - 1:first] == b"\r" else b"\n"


def _fields(head: bytes) -> list[bytes]:
    """Header fields with their continuation lines attached, line endings kept. Each field
    is gathered as a list of lines and joined once: `field += line` copied the field for
    every line, quadratic in a header folded over 124,000 lines (44 s of the event loop)."""
    fields: list[list[bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return [b"".join(lines) for lines in fields]


@functools.lru_cache(maxsize=8)
def _strip_pattern(wanted: tuple[bytes, ...]) -> re.Pattern[bytes]:
    """Whole fields whose name starts with one of `wanted`, as `_fields` cuts them (CR, LF
    and CRLF end a line, a line starting with a blank continues the field) and names them
    (the text before the colon, ASCII whitespace around it not counted)."""
    eol = rb"(?:\r\n|\r|\n|\Z)"
    # a field starts the block, or a line that does not start with a blank
    start = rb"(?:\A|(?:(?<=\n)|(?<=\r)(?!\n))(?![ \t]))"
    blanks = rb"(?:[ \t\x0b\x0c]|(?:\r\n|\r|\n)(?=[ \t]))*"  # stripped off the name
    names = b"|".join(re.escape(w) for w in wanted)
    return re.compile(start + blanks + rb"(?:" + names + rb")[^\r\n]*" + eol
                      + rb"(?:[ \t][^\r\n]*" + eol + rb")*", re.IGNORECASE)


# Header text stripped per call of the pattern: the regex costs 25-80 ns a byte, so a slice
# is a few ms of the event loop, and the async callers yield between slices.
SLICE = 64 * 1024
# Where a field starts: after a line ending, at a line that does not continue the last.
_FIELD_START = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?![ \t])")


def _slices(head: bytes) -> Iterator[bytes]:
    """`head` in pieces of about SLICE bytes, each cut where a field starts (so a slice's
    start is a field's start, as at the top of the block)."""
    pos = 0
    while len(head) - pos > SLICE:
        m = _FIELD_START.search(head, pos + SLICE)
        if m is None or m.end() >= len(head):
            break
        yield head[pos:m.end()]
        pos = m.end()
    yield head[pos:] if pos else head


def _stripped(head: bytes, prefixes: Iterable[str]) -> Iterator[bytes]:
    """The fields of `head` left after stripping, slice by slice."""
    wanted = tuple(p.lower().encode("ascii") for p in prefixes)
    if not wanted:
        yield head
        return
    pattern = _strip_pattern(wanted)
    for piece in _slices(head):
        low = piece.lower()
        yield pattern.sub(b"", piece) if any(w in low for w in wanted) else piece


def strip_headers(message: bytes, prefixes: Iterable[str] = STRIP_PREFIXES) -> bytes:
    """Drop every header field whose name starts with one of `prefixes` (case-insensitive).
    A regex in C, no Python step per line or per field however many there are."""
    head, rest = split_head(message)
    if not head:
        return message
    return b"".join(_stripped(head, prefixes)) + rest


async def strip_headers_async(message: bytes,
                              prefixes: Iterable[str] = STRIP_PREFIXES) -> bytes:
    """`strip_headers`, giving the event loop a turn after each SLICE of header text."""
    head, rest = split_head(message)
    if not head:
        return message
    return b"".join([piece async for piece in _turns(_stripped(head, prefixes))]) + rest


async def _turns(pieces: Iterator[bytes]) -> AsyncIterator[bytes]:
    first = True
    for piece in pieces:
        if not first:
            await asyncio.sleep(0)
        first = False
        yield piece


def oversized_field(head: bytes, limit: int = HEADER_SIZE_LIMIT) -> int | None:
    """The size of a header field in `head` longer than `limit` bytes (its folded lines and
    their line endings counted, its last line ending not; at least that size if it is far
    over), or None. C calls only: a field over `limit` covers a whole aligned window of
    limit // 2 bytes where no field starts, and only such windows are looked into."""
    if limit <= 0 or len(head) <= limit:
        return None
    return _oversized_in(head, limit, 0, len(head))


async def oversized_field_async(head: bytes, limit: int = HEADER_SIZE_LIMIT) -> int | None:
    """`oversized_field`, giving the event loop a turn after each SLICE * 16 bytes (about
    2 ms of counting) of a header block bigger than that."""
    if limit <= 0 or len(head) <= limit:
        return None
    step = max(limit // 2, 1) * max(1, SLICE * 16 // max(limit // 2, 1))
    for lo in range(0, len(head), step):
        if lo:
            await asyncio.sleep(0)
        found = _oversized_in(head, limit, lo, min(lo + step, len(head)))
        if found is not None:
            return found
    return None


def _oversized_in(head: bytes, limit: int, first: int, last: int) -> int | None:
    """oversized_field, looking into the windows that start in head[first:last] (`first`
    a multiple of the window)."""
    window = max(limit // 2, 1)
    for at in range(first, last, window):
        stop = min(at + window, len(head))
        # a "\n" not followed by a blank ends a field (a final "\n" ends the block)
        if head.count(b"\n", at, stop) > (head.count(b"\n ", at, stop + 1)
                                          + head.count(b"\n\t", at, stop + 1)):
            continue
        lo = max(0, at - limit - 1)
        region = head[lo:stop + limit + 2]
        # folding made length-preserving: every "\n" left in `flat` ends a field
        flat = region.replace(b"\n ", b"  ").replace(b"\n\t", b" \t")
        start = flat.rfind(b"\n", 0, at - lo) + 1
        end = flat.find(b"\n", at - lo)
        if end < 0:
            end = len(flat)
        elif end > start and flat[end - 1] == 13:  # its CRLF
            end -= 1
        if end - start > limit:
            return end - start
    return None


def header_names(message: bytes) -> list[str]:
    head, _ = split_head(message)
    return [f.split(b":", 1)[0].decode("ascii", "replace").strip() for f in _fields(head)]


def format_header(name: str, value: str, eol: bytes = b"\r\n") -> bytes:
    """`Name: value` folded at spaces near 76 columns; CR/LF in the value cannot break out."""
    value = " ".join(value.replace("\r", " ").replace("\n", " ").split())
    first = f"{name}:"
    lines: list[str] = []
    current = first
    for word in value.split(" "):
        if current != first and len(current) + 1 + len(word) > FOLD_AT:
            lines.append(current)
            current = "\t" + word
        else:
            current += " " + word
    lines.append(current)
    return b"".join(line.encode("utf-8", "surrogateescape") + eol for line in lines)


def prepend_headers(message: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """Put `headers` on top of the message in order, in the message's own line ending."""
    if not headers:
        return message
    eol = line_ending(message)
    return b"".join(format_header(n, v, eol) for n, v in headers) + message


def apply_headers(
    message: bytes,
    headers: Sequence[tuple[str, str]],
    strip: Iterable[str] = STRIP_PREFIXES,
) -> bytes:
    """What the relay does before spooling: strip forged scan headers, then add ours."""
    return b"".join(rewrite_head(message, headers, strip))


def rewrite_head(
    message: bytes,
    headers: Sequence[tuple[str, str]],
    strip: Iterable[str] = STRIP_PREFIXES,
) -> tuple[bytes, memoryview]:
    """`apply_headers` as (new header block, the rest of `message` as a view): only the
    header block is copied, so a 20 MB message costs no 20 MB copies (the spool writes the
    two pieces one after the other)."""
    cut = head_end(message)
    kept = strip_headers(message[:cut], strip)
    ours = b"".join(format_header(n, v, _eol_after(kept, message, cut)) for n, v in headers)
    return ours + kept, memoryview(message)[cut:]


async def rewrite_head_async(
    message: bytes,
    headers: Sequence[tuple[str, str]],
    strip: Iterable[str] = STRIP_PREFIXES,
) -> tuple[bytes, memoryview]:
    """`rewrite_head` for the event loop: a 10 MB header block is stripped a slice a turn."""
    cut = head_end(message)
    kept = await strip_headers_async(message[:cut], strip)
    ours = b"".join(format_header(n, v, _eol_after(kept, message, cut)) for n, v in headers)
    return ours + kept, memoryview(message)[cut:]


def _eol_after(kept: bytes, message: bytes, cut: int) -> bytes:
    """line_ending(kept + message[cut:]), without building it."""
    if b"\n" in kept:
        return line_ending(kept)
    first = message.find(b"\n", cut)
    if first < 0:
        return b"\n"
    before = message[first - 1:first] if first > cut else kept[-1:]
    return b"\r\n" if before == b"\r" and len(kept) + first - cut > 0 else b"\n"
