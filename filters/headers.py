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


def split_head(message: bytes) -> tuple[bytes, bytes]:
    """(header block including its last line ending, everything from the blank line on)."""
    if message.startswith((b"\r\n", b"\n")):
        return b"", message
    candidates = [i for i in (message.find(b"\r\n\r\n"), message.find(b"\n\n")) if i >= 0]
    if not candidates:
        return message, b""
    end = min(candidates)
    cut = end + (2 if message.startswith(b"\r\n", end) else 1)
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
    return prepend_headers(strip_headers(message, strip), headers)
