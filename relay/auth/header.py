"""The Authentication-Results header (RFC 8601) Floodgate writes, and the removal of the
ones a sender forged under our authserv-id.

A downstream filter (Sieve, a mailbox provider's rules) believes an Authentication-Results
field by its authserv-id, so any field the sender supplied claiming ours, and any
ARC-Authentication-Results claiming it, is removed before ours is prepended (RFC 8601 5;
the X-Spam-* headers are stripped the same way, filters/headers.py).
"""

from __future__ import annotations

import re

from filters.headers import _fields
from relay.auth.check import AuthReport

NAME = "Authentication-Results"
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+$")
_STRIPPED = (b"authentication-results", b"arc-authentication-results")
_INSTANCE = re.compile(r"^\s*i\s*=\s*\d+\s*;", re.IGNORECASE)
_COMMENT = re.compile(r"\([^()]*\)")


def _value(text: str) -> str:
    """A pvalue: a token as is, anything else as a quoted string."""
    if _TOKEN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    clean = "".join(c for c in text if c.isprintable() and c not in "()\\")[:120]
    return f" ({clean})" if clean else ""


def authentication_results(authserv_id: str, report: AuthReport) -> str:
    """The field's value: `authserv-id; spf=...; dkim=...; dmarc=...; arc=...`."""
    spf = report.spf
    ident = (f"smtp.mailfrom={_value(report.mail_from)}" if spf.identity == "mailfrom"
             else f"smtp.helo={_value(spf.domain)}")
    parts = [f"spf={spf.result}{_comment(spf.reason)} {ident}"]
    if not report.dkim:
        parts.append("dkim=none")
    for d in report.dkim:
        notes = "body length limited (l=)" if d.body_length_limited else d.reason
        props = [f"header.d={_value(d.domain)}", f"header.s={_value(d.selector)}"]
        if d.algorithm:
            props.append(f"header.a={_value(d.algorithm)}")
        if d.header_b:
            props.append(f"header.b={_value(d.header_b)}")
        parts.append(f"dkim={d.result}{_comment(notes)} " + " ".join(props))
    dmarc = report.dmarc
    note = dmarc.reason
    if report.arc_override:
        note += f"; overridden by trusted ARC sealer {report.arc_override}"
    from_prop = f" header.from={_value(dmarc.from_domain)}" if dmarc.from_domain else ""
    parts.append(f"dmarc={dmarc.result}{_comment(note)}{from_prop}")
    arc = report.arc
    parts.append(f"arc={arc.result}{_comment(arc.reason)}")
    return f"{authserv_id}; " + "; ".join(parts)


def _claims(value: bytes, authserv_id: str, arc: bool) -> bool:
    text = value.decode("utf-8", "replace")
    text = re.sub(r"\r?\n[ \t]", " ", text)
    if arc:
        m = _INSTANCE.match(text)
        if m is None:
            return False
        text = text[m.end():]
    text = _COMMENT.sub(" ", text)
    found = text.split(";", 1)[0].split()
    return bool(found) and found[0].lower() == authserv_id.lower()


def claims_ours(name: str, value: bytes, authserv_id: str) -> bool:
    """Whether a field (`name`, raw `value`) is an Authentication-Results or
    ARC-Authentication-Results naming `authserv_id`: one to remove (the milter's test)."""
    key = name.strip().lower().encode()
    return key in _STRIPPED and _claims(value, authserv_id, key.startswith(b"arc"))


def strip_ours(head: bytes, authserv_id: str) -> bytes:
    """The header block without any Authentication-Results or ARC-Authentication-Results
    field that names `authserv_id`. Only a block that has such a field name is taken apart."""
    low = head.lower()
    if not any(name in low for name in _STRIPPED):
        return head
    kept = []
    for field in _fields(head):
        name, _, value = field.partition(b":")
        key = name.strip().lower()
        if key in _STRIPPED and _claims(value, authserv_id, key.startswith(b"arc")):
            continue
        kept.append(field)
    return b"".join(kept)
