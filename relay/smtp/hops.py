"""Mail loops: counting `Received:` trace lines as Postfix's hopcount_limit does.

Every MTA adds one `Received:` line (RFC 5321 4.4); a message carrying more than the limit
has gone round a loop and would go round forever. Only the header block is searched, with
one regular expression (no MIME parse): a header line starting `Received:` is a hop, a
folded continuation line (starting with white space) is not.
"""

from __future__ import annotations

import re

_RECEIVED = re.compile(rb"(?:\A|\n)received[ \t]*:", re.IGNORECASE)
_HEADER_END = re.compile(rb"\n\r?\n")


def hop_count(message: bytes, stop: int) -> int:
    """`Received:` lines in the header of `message`, counting no further than `stop`."""
    if message.startswith((b"\r\n", b"\n")):  # no header at all
        return 0
    end = _HEADER_END.search(message)
    endpos = end.start() + 1 if end is not None else len(message)
    n = 0
    for _ in _RECEIVED.finditer(message, 0, endpos):
        n += 1
        if n >= stop:
            break
    return n
