"""Envelope address checks the recipient filter does not make: control characters,
RFC 5321 sizes and sender-specified routing.

An MX in front of other servers must not let a client choose the next destination: a
local part holding `%` (the percent hack), `!` (a UUCP bang path) or a quoted `@` is
routing that an older next hop may still obey, so such recipients are refused as relaying
even in a hosted domain, as Postfix's reject_unauth_destination does. Source routes
(`<@a,@b:user@d>`) are dropped by the parser (RFC 5321 appendix C); what is left is
judged like any other address.
"""

from __future__ import annotations

import re

from filters.base import Verdict

MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # 4.5.3.1.2
MAX_PATH = 256  # 4.5.3.1.3, angle brackets included
ROUTING = frozenset("%!@")

_QUOTED_PAIR = re.compile(r"\\(.)")
# C0 controls and DEL: RFC 5321's qtextSMTP and atext exclude them, so they can only be
# smuggled in (the parser takes some inside quotes). The next hop refuses them and the
# message would sit in the queue until max_lifetime.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def unquote_local(local: str) -> str:
    """`"a\\"b"` to `a"b`: the mailbox a quoted local part names."""
    if len(local) >= 2 and local[0] == local[-1] == '"':
        return _QUOTED_PAIR.sub(r"\1", local[1:-1])
    return local


def size_problem(address: str, *, sender: bool) -> Verdict | None:
    """Path and domain limits, and for recipients the local part limit.

    Senders' local parts are not limited: SRS and VERP senders exceed 64 octets and are
    legitimate, and a sender is never a destination.
    """
    local, _, domain = address.rpartition("@")
    status = "5.1.7" if sender else "5.1.3"
    if len(address) + 2 > MAX_PATH:
        return Verdict.reject(501, status, "protocol", "Path too long (RFC 5321 4.5.3.1.3)")
    if len(domain) > MAX_DOMAIN:
        return Verdict.reject(501, status, "protocol", "Domain too long (RFC 5321 4.5.3.1.2)")
    if not sender and len(local) > MAX_LOCAL:
        return Verdict.reject(501, status, "protocol",
                              "Local part too long (RFC 5321 4.5.3.1.1)")
    return None


def control_problem(address: str, *, sender: bool) -> Verdict | None:
    """NUL, TAB, DEL or another control character anywhere in the address (or in the
    whole MAIL/RCPT argument: esmtp-values exclude them too, RFC 5321 4.1.2)."""
    if _CONTROL.search(address) is None:
        return None
    if sender:
        return Verdict.reject(501, "5.1.7", "protocol",
                              "Bad sender address syntax (control character)")
    return Verdict.reject(501, "5.1.3", "protocol",
                          "Bad recipient address syntax (control character)")


def is_postmaster(address: str) -> bool:
    """`postmaster`, or postmaster at some domain, in any case (RFC 5321 4.5.1)."""
    return unquote_local(address.rpartition("@")[0] or address).lower() == "postmaster"


def routing_problem(address: str) -> Verdict | None:
    """A recipient whose local part asks a later hop to route it elsewhere."""
    local = unquote_local(address.rpartition("@")[0])
    if ROUTING & set(local):
        return Verdict.reject(554, "5.7.1", "relay_denied",
                              "Relay access denied (sender-specified routing)",
                              detail="routing in local part")
    return None
