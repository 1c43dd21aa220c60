"""DMARC (RFC 7489): is the RFC 5322.From domain's policy met by an aligned SPF or DKIM pass?

The record is looked up at _dmarc.<From domain>, then at _dmarc.<organisational domain>
(the Public Suffix List of the publicsuffixlist package, which ships it). Alignment is
relaxed (same organisational domain) or strict (same name) per `aspf`/`adkim`. A DKIM pass
of a signature with l= never aligns: the unsigned tail could be anything. `pct` samples the
failures the policy applies to (RFC 7489 6.6.4: the rest get the next policy down).
"""

from __future__ import annotations

import email.utils
import functools
import random
import re
from dataclasses import dataclass
from typing import Literal

from publicsuffixlist import PublicSuffixList

from filters.headers import _fields, split_head
from relay.auth.lookup import DnsTemporary, TxtLookup
from relay.auth.verdicts import DkimResult, SpfResult

Policy = Literal["none", "quarantine", "reject"]
_POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True)
class DmarcRecord:
    p: Policy
    sp: Policy
    pct: int = 100
    adkim: Literal["r", "s"] = "r"
    aspf: Literal["r", "s"] = "r"


@dataclass(frozen=True)
class DmarcResult:
    result: Literal["pass", "fail", "none", "temperror", "permerror"]
    from_domain: str
    # the policy the record asks for this message (p=, or sp= for a subdomain), and the one
    # that applies after pct= sampling; "none" when there is no record or the result passed
    requested: Policy = "none"
    policy: Policy = "none"
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def organisational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix plus one label (the name itself when it is a
    suffix, or has no suffix the list knows beyond the default rule)."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def aligned(a: str, b: str, mode: str) -> bool:
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return organisational_domain(a) == organisational_domain(b)


_TAG = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def parse_record(text: str) -> DmarcRecord | None:
    """A DMARC record, or None when it is not one (RFC 7489 6.3: v=DMARC1 first; a p= that
    is missing or unknown with a rua= present is p=none, without one it is no record)."""
    parts = text.split(";")
    tags: dict[str, str] = {}
    for part in parts:
        m = _TAG.match(part)
        if m:
            tags.setdefault(m.group(1).lower(), m.group(2))
        elif part.strip():
            return None
    first = _TAG.match(parts[0])
    if first is None or first.group(1).lower() != "v" or first.group(2) != "DMARC1":
        return None
    p = tags.get("p", "").lower()
    if p not in _POLICIES:
        if "rua" not in tags:
            return None
        p = "none"
    sp = tags.get("sp", "").lower()
    sp = sp if sp in _POLICIES else p
    try:
        pct = max(0, min(100, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    adkim = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    return DmarcRecord(p, sp, pct, adkim, aspf)  # type: ignore[arg-type]


async def _records_at(domain: str, txt: TxtLookup) -> list[DmarcRecord | None]:
    """The DMARC records at _dmarc.<domain> (None for one starting v=DMARC1 that does not
    parse: it still counts, RFC 7489 6.6.3 step 4)."""
    found: list[DmarcRecord | None] = []
    for raw in await txt(f"_dmarc.{domain}"):
        text = raw.decode("utf-8", "replace")
        if text.startswith("v=DMARC1"):
            found.append(parse_record(text))
    return found


def from_domain(message: bytes) -> str | None:
    """The domain of the one address in the one From: field; None when there is not exactly
    one (RFC 7489 6.6.1: such a message cannot be evaluated)."""
    head, _ = split_head(message)
    values = [f.split(b":", 1)[1] for f in _fields(head)
              if f.split(b":", 1)[0].strip().lower() == b"from" and b":" in f]
    if len(values) != 1:
        return None
    text = re.sub(r"\r?\n[ \t]", " ", values[0].decode("utf-8", "replace"))
    addresses = [a for _, a in email.utils.getaddresses([text]) if a]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return None
    domain = addresses[0].rpartition("@")[2].strip().lower().rstrip(".")
    return domain or None


async def check_dmarc(message: bytes, spf: SpfResult | None, dkim: list[DkimResult],
                      txt: TxtLookup, sample: float | None = None) -> DmarcResult:
    """The DMARC result and the policy that applies. `sample` (0-100) replaces the random
    draw for pct=, for tests."""
    domain = from_domain(message)
    if domain is None:
        return DmarcResult("permerror", "", reason="not exactly one From address")
    org = organisational_domain(domain)
    subdomain = False
    try:  # RFC 7489 6.6.3: the From domain's records; none there, the organisational's
        records = await _records_at(domain, txt)
        if not records and org != domain:
            records = await _records_at(org, txt)
            subdomain = True
    except DnsTemporary as e:
        return DmarcResult("temperror", domain, reason=f"DMARC record: {e}")
    record = records[0] if len(records) == 1 else None
    if record is None:  # none, more than one, or one that does not parse: no DMARC
        return DmarcResult("none", domain, reason="no (single valid) DMARC record")
    # the SPF-authenticated identifier: MAIL FROM's domain, the HELO name for the null
    # sender (RFC 7489 3.1.2, RFC 7208 2.4)
    spf_ok = (spf is not None and spf.result == "pass"
              and aligned(spf.domain, domain, record.aspf))
    dkim_ok = any(d.result == "pass" and not d.body_length_limited
                  and aligned(d.domain, domain, record.adkim) for d in dkim)
    if spf_ok or dkim_ok:
        return DmarcResult("pass", domain, spf_aligned=spf_ok, dkim_aligned=dkim_ok,
                           reason="aligned " + ("spf" if spf_ok else "dkim"))
    requested: Policy = record.sp if subdomain else record.p
    # a check that could not be made might have passed: not a failure to act on
    unsure = (spf is not None and spf.result == "temperror"
              and aligned(spf.domain, domain, record.aspf)) or any(
        d.result == "temperror" and aligned(d.domain, domain, record.adkim) for d in dkim)
    if unsure:
        return DmarcResult("temperror", domain, requested=requested,
                           reason="an aligned check failed temporarily")
    policy = requested
    draw = random.uniform(0, 100) if sample is None else sample
    sampled = record.pct >= 100 or draw < record.pct
    if not sampled:
        policy = "quarantine" if requested == "reject" else "none"
    reason = f"p={requested}" + ("" if sampled else f" pct={record.pct}, sampled out")
    return DmarcResult("fail", domain, requested=requested, policy=policy, reason=reason)
