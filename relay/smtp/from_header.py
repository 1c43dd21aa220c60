"""The domain of a message's From: header, for the sender lists' From-domain entries.

Read from the header block only, first From: field, unfolded; a field that cannot be read
as an address gives "" (nothing to match), never an error."""

from __future__ import annotations

import email.utils
import re

_FROM = re.compile(rb"^from[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.I | re.M)
MAX_FIELD = 8192  # a From: field is a line or two; more is a header bomb, read no further


def from_domain(head: bytes) -> str:
    """The domain of the first address in the first From: field, as written ("" if none)."""
    m = _FROM.search(head)
    if m is None:
        return ""
    value = m.group(1)[:MAX_FIELD].decode("utf-8", "replace")
    value = re.sub(r"\r?\n[ \t]", " ", value)
    _, address = email.utils.parseaddr(value)
    local, at, domain = address.rpartition("@")
    return domain.strip() if at and local else ""
