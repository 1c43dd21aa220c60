"""DKIM verification (RFC 6376): every signature of a message, with dkimpy.

Three steps, so neither DNS nor RSA holds up the event loop: the signatures are read from
the header section in a worker, every key is fetched concurrently through the shared
`TxtLookup`, and dkimpy verifies the whole message in a worker against those prefetched
records (relay/auth/domainkeys.py). Both steps are top-level functions of picklable
arguments, so the worker may be a thread (the default) or a process: hashing a large body is
regular expressions and hashlib calls that hold the GIL, which only a process keeps off
the loop.
A message may carry any number of signatures; only the first `MAX_SIGNATURES` are verified
(each costs a body hash and a public-key operation), the rest answer neutral.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace

import dkim
from dkim.canonicalization import CanonicalizationPolicy
from dkim.util import InvalidTagValueList, parse_tag_value

from relay.auth.domainkeys import (
    INLINE_MAX_BYTES,
    INLINE_MAX_SIGNATURES,
    KeyRecord,
    answering_from,
    fetch_keys,
    key_name,
    key_problem,
    parsed,
)
from relay.auth.lookup import TxtLookup
from relay.auth.verdicts import DkimResult

MAX_SIGNATURES = 10
HEADER_B_MIN = 8  # RFC 6008 2: at least 8 characters of b= to tell signatures apart
HEADER_B_MAX = 32

_SIGNED = re.compile(rb"(?im)^dkim-signature[ \t]*:")


def header_section(message: bytes) -> bytes:
    """The message up to its first empty line: where a cheap look for a header goes.
    Runs on the event loop, so no search goes past the header section (a search for a
    bare-LF empty line through a 20 MB CRLF body took 40 ms)."""
    crlf = message.find(b"\r\n\r\n")
    limit = len(message) if crlf < 0 else crlf + 2
    lf = message.find(b"\n\n", 0, limit)
    ends = [i for i in (crlf, lf) if i >= 0]
    return message[: min(ends)] if ends else message


async def verify_dkim(message: bytes, txt: TxtLookup, *, executor: Executor | None = None,
                      max_signatures: int = MAX_SIGNATURES) -> list[DkimResult]:
    """One result per DKIM-Signature header, in header order; [] when unsigned.

    Never raises: a malformed signature, key or message is a result (neutral, permerror),
    a key DNS could not give now is temperror. `executor` runs the parsing and the
    cryptography (default: the loop's default executor; a ProcessPoolExecutor keeps even
    a 25 MB body's hashing off the loop's GIL); without one, a message of at most
    INLINE_MAX_BYTES with at most INLINE_MAX_SIGNATURES signatures is verified on the loop."""
    head = header_section(message)
    if not _SIGNED.search(head):
        return []
    loop = asyncio.get_running_loop()
    inline = executor is None and len(message) <= INLINE_MAX_BYTES
    try:
        plan = (_read(head, max_signatures) if inline
                else await loop.run_in_executor(executor, _read, head, max_signatures))
        if not plan.checks:
            return [r for r in plan.results if r is not None]
        keys = await fetch_keys({c.name for c in plan.checks}, txt)
        if inline and len(plan.checks) <= INLINE_MAX_SIGNATURES:
            return _verify(message, plan, keys)
        return await loop.run_in_executor(executor, _verify, message, plan, keys)
    except Exception as e:  # a dkimpy corner we did not foresee must not fail the message
        return [DkimResult("neutral", "", "", reason=f"not verified: {type(e).__name__}")]


@dataclass
class _Check:
    """A signature that passed the syntax checks and now needs its key."""

    index: int              # among the message's DKIM-Signature headers
    name: str               # selector._domainkey.domain
    algorithm: bytes
    length: int | None      # l=
    canonicalization: bytes  # c=


@dataclass
class _Plan:
    results: list[DkimResult | None] = field(default_factory=list)   # None: see checks
    stubs: list[DkimResult] = field(default_factory=list)    # d=, s=, a=, l=, b= per header
    checks: list[_Check] = field(default_factory=list)


def _read(head: bytes, limit: int) -> _Plan:
    """Every DKIM-Signature header read; those that cannot be verified get their result."""
    plan = _Plan()
    try:
        headers, _ = dkim.rfc822_parse(head)
    except Exception as e:
        for value in _signature_values_anyway(head):
            stub = _stub(value)
            plan.stubs.append(stub)
            plan.results.append(_as(stub, "permerror",
                                    f"header section not parsable: {type(e).__name__}"))
        return _with_header_b(plan)
    values = [v for n, v in headers if n.lower() == b"dkim-signature"]
    for index, value in enumerate(values):
        stub = _stub(value)
        plan.stubs.append(stub)
        if index >= limit:
            plan.results.append(_as(stub, "neutral",
                                    f"not verified: only the first {limit} signatures are"))
            continue
        tags, problem = _syntax(value)
        if problem:
            plan.results.append(_as(stub, *problem))
            continue
        name = key_name(stub.selector.encode(), stub.domain.encode())
        if name is None:
            plan.results.append(_as(stub, "permerror", "s= or d= is not a DNS name"))
            continue
        plan.results.append(None)
        length = int(tags[b"l"]) if b"l" in tags else None
        plan.checks.append(_Check(index, name, tags[b"a"], length,
                                  tags.get(b"c", b"simple/simple")))
    return _with_header_b(plan)


def _syntax(value: bytes) -> tuple[dict[bytes, bytes], tuple[str, str] | None]:
    """The signature's tags, and (result, reason) when it cannot be verified as written."""
    try:
        tags = parse_tag_value(value)
    except InvalidTagValueList:
        return {}, ("neutral", "signature is not a tag=value list")
    return tags, _problem(tags)


def _problem(tags: dict[bytes, bytes]) -> tuple[str, str] | None:
    try:
        dkim.validate_signature_fields(dict(tags))
    except dkim.ValidationError as e:
        text = str(e)
        if text.startswith("unknown signature algorithm"):
            return "permerror", text[:80]
        if text.startswith(("x= value is past", "t= value is in the future")):
            return "fail", "signature expired" if text.startswith("x=") else "signed in future"
        return "neutral", f"signature syntax: {text[:80]}"
    except Exception as e:  # e.g. i= equal in length to d=: dkimpy indexes past its end
        return "neutral", f"signature syntax: {type(e).__name__}"
    if tags[b"a"] == b"rsa-sha1":
        return "permerror", "rsa-sha1 is not accepted (RFC 8301)"
    if b"from" not in (h.strip().lower() for h in tags[b"h"].split(b":")):
        # RFC 6376 6.1.1: a signature that leaves From unsigned vouches for no author
        return "permerror", "From is not signed"
    try:
        CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except Exception:
        return "neutral", "signature syntax: c= is not a canonicalization"
    return None


def _verify(message: bytes, plan: _Plan, keys: dict[str, KeyRecord]) -> list[DkimResult]:
    """Each pending signature verified by dkimpy against its prefetched key."""
    verifier = parsed(dkim.DKIM, message)
    dnsfunc = answering_from(keys)
    bodies: dict[bytes, int] = {}
    for check in plan.checks:
        stub = plan.stubs[check.index]
        outcome = _one(verifier, check, keys[check.name], dnsfunc, bodies)
        plan.results[check.index] = _as(stub, *outcome)
    return [r for r in plan.results if r is not None]


def _one(verifier: dkim.DKIM, check: _Check, key: KeyRecord,
         dnsfunc: Callable[..., bytes | None], bodies: dict[bytes, int]) -> tuple[str, str]:
    if key.temporary:
        return "temperror", key.temporary
    if key.record is None:
        return "permerror", key.missing
    problem = key_problem(key.record, check.algorithm)
    if problem:
        return "permerror", problem
    if check.length is not None:
        kind = check.canonicalization.split(b"/")[-1]
        if kind not in bodies:
            canon = CanonicalizationPolicy.from_c_value(check.canonicalization)
            bodies[kind] = len(canon.canonicalize_body(verifier.body))
        if check.length > bodies[kind]:
            # the signature claims more body than there is: it cannot be what was signed
            return "fail", "l= is longer than the body"
    try:
        good = verifier.verify(idx=check.index, dnsfunc=dnsfunc)
    except dkim.KeyFormatError as e:    # e.g. a key under 1024 bits (RFC 8301)
        return "permerror", str(e)[:80]
    except dkim.ValidationError as e:   # body hash mismatch
        return "fail", str(e).split(" (")[0][:80]
    except binascii.Error:              # b= or bh= past dkimpy's base64 pattern
        return "neutral", "signature syntax: b= or bh= is not base64"
    except Exception as e:
        return "neutral", f"not verified: {type(e).__name__}"
    return ("pass", "") if good else ("fail", "signature did not verify")


def _stub(value: bytes) -> DkimResult:
    """d=, s=, a=, l= and b= read leniently, so even a broken signature can be named."""
    tags: dict[bytes, bytes] = {}
    for spec in value.split(b";"):
        key, eq, val = spec.partition(b"=")
        key = key.strip().lower()
        if eq and key in (b"d", b"s", b"a", b"l", b"b") and key not in tags:
            tags[key] = val.strip()
    text = {k: v.decode("utf-8", "replace") for k, v in tags.items()}
    return DkimResult("neutral", text.get(b"d", "")[:255], text.get(b"s", "")[:255],
                      algorithm=text.get(b"a", "")[:40], body_length_limited=b"l" in tags,
                      header_b=re.sub(r"\s+", "", text.get(b"b", "")))


def _as(stub: DkimResult, result: str, why: str) -> DkimResult:
    """`why` is the result's explanation (DkimResult.reason), not an event reason."""
    return replace(stub, result=result, reason=why)


def _with_header_b(plan: _Plan) -> _Plan:
    """Cut each b= to the shortest prefix (8 to 32 characters) that tells it apart."""
    full = [s.header_b[:HEADER_B_MAX] for s in plan.stubs]
    cut = []
    for b in full:
        n = HEADER_B_MIN
        while n < len(b) and any(o != b and o[:n] == b[:n] for o in full):
            n += 1
        cut.append(b[:n] if _base64ish(b[:n]) else "")
    plan.stubs = [replace(s, header_b=c) for s, c in zip(plan.stubs, cut, strict=True)]
    plan.results = [None if r is None else replace(r, header_b=c)
                    for r, c in zip(plan.results, cut, strict=True)]
    return plan


def _base64ish(text: str) -> bool:
    try:
        base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except Exception:
        return False
    return True


def _signature_values_anyway(message: bytes) -> list[bytes]:
    """DKIM-Signature values from a header section dkimpy refused, unfolded leniently."""
    head = header_section(message).replace(b"\r\n", b"\n")
    unfolded = re.sub(rb"\n[ \t]", b" ", head)
    return [line.split(b":", 1)[1] for line in unfolded.split(b"\n")
            if line.lower().startswith(b"dkim-signature") and b":" in line]
