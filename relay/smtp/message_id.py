"""The Message-ID of a message as received: what `floodgate trace --message-id` finds it by.

A sender's ticket often quotes only the Message-ID (the one thing both ends' logs share).
Only the header block is searched, with one regular expression (no MIME parse), as
hops.py counts Received lines; a folded value is unfolded.
"""

from __future__ import annotations

import re

from filters.headers import head_end

_MESSAGE_ID = re.compile(rb"(?:\A|\n)message-id[ \t]*:[ \t]*((?:[^\r\n]|\r?\n[ \t])*)",
                         re.IGNORECASE)
LIMIT = 255  # events.message_id's width (relay/events/record.py bounded_message_id)


def message_id_of(message: bytes) -> str:
    """The first Message-ID field's value, unfolded and trimmed ("" if there is none)."""
    found = _MESSAGE_ID.search(message, 0, head_end(message))
    if found is None:
        return ""
    value = re.sub(rb"\r?\n[ \t]+", b" ", found.group(1)).strip()
    return value.decode("utf-8", "replace")[:LIMIT]

