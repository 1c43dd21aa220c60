"""Header surgery on raw message bytes: strip forged fields, prepend ours, body untouched.

The relay spools exactly what it received plus its own trace and scan headers, so these work
on bytes (never re-serialise through the email package, which rewrites folding and line
endings) and keep the message's own line ending (CRLF from SMTP, LF from a file on disk).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Sender-supplied copies of the headers the scanners vouch for: a spammer writing
# "X-Spam-Flag: NO" must not be believed downstream, nor a forged "not scanned" note.
STRIP_PREFIXES: tuple[str, ...] = ("x-spam-", "x-floodgate-")

FOLD_AT = 76


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
    """Header fields with their continuation lines attached, line endings kept."""
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def strip_headers(message: bytes, prefixes: Iterable[str] = STRIP_PREFIXES) -> bytes:
    """Drop every header field whose name starts with one of `prefixes` (case-insensitive)."""
    wanted = tuple(p.lower().encode("ascii") for p in prefixes)
    head, rest = split_head(message)
    if not wanted or not head:
        return message
    kept = [f for f in _fields(head) if not f.split(b":", 1)[0].strip().lower().startswith(wanted)]
    return b"".join(kept) + rest


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


def _eol_after(kept: bytes, message: bytes, cut: int) -> bytes:
    """line_ending(kept + message[cut:]), without building it."""
    if b"\n" in kept:
        return line_ending(kept)
    first = message.find(b"\n", cut)
    if first < 0:
        return b"\n"
    before = message[first - 1:first] if first > cut else kept[-1:]
    return b"\r\n" if before == b"\r" and len(kept) + first - cut > 0 else b"\n"
