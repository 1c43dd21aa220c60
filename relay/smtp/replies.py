"""Enhanced status codes (RFC 3463) for the replies aiosmtpd writes on its own.

Floodgate's handler writes complete replies; aiosmtpd's built-in ones ("503 Error: need
MAIL command", "552 Error: Too much mail data") lack the enhanced code that
ENHANCEDSTATUSCODES promises. Every reply goes through `push`, so this table is the one
place they are fixed, and it also says which of them count as the client's fault.
"""

from __future__ import annotations

import re

_HAS_STATUS = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")

SIZE_TEXT = "Message size exceeds fixed maximum message size"

# (prefix of aiosmtpd's reply, replacement, stage, event reason or None)
KNOWN: list[tuple[str, str, str, str | None]] = [
    ("552 Error: message size exceeds", f"552 5.3.4 {SIZE_TEXT}", "mail", "size"),
    ("552 Error: Too much mail data", f"552 5.3.4 {SIZE_TEXT}", "data", "size"),
    ("500 Line too long", "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)", "data", "protocol"),
    ("500 Command line too long", "500 5.5.2 Command line too long", "command", "protocol"),
    ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax", "command", "protocol"),
    ("500 Error: strict ASCII mode", "500 5.5.2 Error: non-ASCII characters in command",
     "command", "protocol"),
    ("500 Error: command", "", "command", "protocol"),
    ("501 ", "", "command", "protocol"),
    ("503 ", "", "command", "protocol"),
    ("553 5.1.3", "", "command", "protocol"),
    ("555 ", "", "command", "protocol"),
    ("502 5.5.1 Too many unrecognized", "", "command", "protocol"),
]

_DEFAULT_STATUS = {
    "211": "2.0.0", "214": "2.0.0", "220": "2.0.0", "221": "2.0.0", "250": "2.0.0",
    "252": "2.0.0", "421": "4.3.0", "450": "4.2.0", "451": "4.3.0", "452": "4.3.1",
    "454": "4.7.0", "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1",
    "504": "5.5.4", "530": "5.7.0", "550": "5.0.0", "552": "5.3.4", "553": "5.1.3",
    "554": "5.0.0", "555": "5.5.4",
}


def with_status(reply: str) -> str:
    """Insert an enhanced status code after the reply code when it has none."""
    if _HAS_STATUS.match(reply) or not reply[:3].isdigit() or reply[:3] in ("334", "354"):
        return reply
    code, rest = reply[:3], reply[4:]
    status = _DEFAULT_STATUS.get(code, f"{code[0]}.0.0")
    return f"{code}{reply[3:4] or ' '}{status} {rest}".rstrip()


# aiosmtpd replies that already carry a status code; any other coded reply is Floodgate's own.
_PRECODED = ("553 5.1.3 Error: malformed address", "502 5.5.1 Too many unrecognized")


def classify(reply: str) -> tuple[str, str | None, str]:
    """(reply to send, event reason or None, stage) for a reply about to be written.

    Floodgate's own replies carry their status and pass through untouched.
    """
    if _HAS_STATUS.match(reply) and not reply.startswith(_PRECODED):
        return reply, None, ""
    for prefix, replacement, stage, reason in KNOWN:
        if reply.startswith(prefix):
            return (replacement or with_status(reply)), reason, stage
    return with_status(reply), None, ""


REF = re.compile(r" \[ref ([0-9a-f]{12})\]$")


def with_ref(reply: str, ref: str) -> str:
    """`reply` with the session's reference at the end of its text (`550 5.1.1 User
    unknown [ref 3f9a1c2b7e10]`): the enhanced code stays first, where clients parse it,
    and a sender who pastes the reply into a ticket gives the operator what `floodgate
    trace` finds the session by. A reply already carrying one is left alone."""
    if not ref or REF.search(reply):
        return reply
    return f"{reply} [ref {ref}]"
