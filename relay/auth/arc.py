"""ARC chain verification (RFC 8617) with dkimpy, driven as relay/auth/dkim.py drives it.

The ARC sets are read from the header section in a worker, every ARC-Seal and
ARC-Message-Signature key is fetched concurrently through the shared `TxtLookup`, and dkimpy
validates the chain in a worker (a thread, or a process: see relay/auth/dkim.py) against
those records. A chain longer than `MAX_ARC_SETS` is not verified
(each set costs a body hash and two public-key operations) and fails.
"""

from __future__ import annotations

import asyncio
import binascii
import re
from concurrent.futures import Executor
from dataclasses import dataclass, field

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from relay.auth.dkim import header_section
from relay.auth.domainkeys import (
    INLINE_MAX_BYTES,
    INLINE_MAX_SIGNATURES,
    KeyRecord,
    answering_from,
    fetch_keys,
    key_name,
    parsed,
)
from relay.auth.lookup import TxtLookup
from relay.auth.quiet import QUIET
from relay.auth.verdicts import ArcResult

# RFC 8617 4.2.1 allows 50 sets; real chains carry a few (one per forwarder or list)
MAX_ARC_SETS = 10

_ARC_NAMES = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
_ARC = re.compile(rb"(?im)^arc-(?:seal|message-signature|authentication-results)[ \t]*:")
_INSTANCE_TAG = re.compile(rb"^\s*i\s*=\s*\d+\s*;\s*", re.IGNORECASE)


async def verify_arc(message: bytes, txt: TxtLookup, *, executor: Executor | None = None,
                     max_sets: int = MAX_ARC_SETS) -> ArcResult:
    """The chain's validation status (cv) as RFC 8617 5.2 computes it.

    `sealers` and `results` are what the ARC sets claim, newest first, whatever the result:
    they vouch for anything only when the result is pass. `temporary` marks a fail that
    met a key lookup DNS could not answer now. Never raises."""
    head = header_section(message)
    if not _ARC.search(head):
        return ArcResult("none")
    loop = asyncio.get_running_loop()
    # as DKIM (relay/auth/domainkeys.py): a small message's chain of one or two sets is
    # verified on the loop, the rest in the executor
    inline = executor is None and len(message) <= INLINE_MAX_BYTES
    try:
        plan = (_read(head, max_sets) if inline
                else await loop.run_in_executor(executor, _read, head, max_sets))
        if plan.verdict is not None:
            return plan.verdict
        keys = await fetch_keys(plan.names, txt)
        if inline and plan.instances <= INLINE_MAX_SIGNATURES:
            return _verify(message, plan, keys)
        return await loop.run_in_executor(executor, _verify, message, plan, keys)
    except Exception as e:  # a dkimpy corner we did not foresee must not fail the message
        return ArcResult("fail", reason=f"not verified: {type(e).__name__}")


@dataclass
class _Plan:
    instances: int = 0
    sealers: tuple[str, ...] = ()
    results: tuple[str, ...] = ()
    names: set[str] = field(default_factory=set)
    verdict: ArcResult | None = None    # settled without DNS


def _read(head: bytes, limit: int) -> _Plan:
    try:
        verifier = dkim.ARC(head, logger=QUIET)
    except Exception as e:
        return _Plan(verdict=ArcResult(
            "fail", reason=f"header section not parsable: {type(e).__name__}"))
    newest, numbered = verifier.sorted_arc_headers()
    present = sum(1 for n, _ in verifier.headers if n.lower() in _ARC_NAMES)
    plan = _Plan(instances=newest)
    if present != len(numbered):
        plan.verdict = ArcResult("fail", newest, reason="an ARC header field has no i=")
        return plan
    if newest > limit:
        plan.verdict = ArcResult("fail", newest,
                                 reason=f"not verified: more than {limit} ARC sets")
        return plan
    seals: dict[int, dict[bytes, bytes]] = {}
    results: dict[int, str] = {}
    broken = ""
    for instance, (name, value) in numbered:
        kind = name.lower()
        if kind == b"arc-authentication-results":
            results.setdefault(instance, _payload(value))
            continue
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            what = "ARC-Seal" if kind == b"arc-seal" else "ARC-Message-Signature"
            broken = broken or f"{what} i={instance} is not a tag=value list"
            continue
        if kind == b"arc-seal":
            seals.setdefault(instance, tags)
        key = key_name(tags.get(b"s", b""), tags.get(b"d", b""))
        if key:
            plan.names.add(key)
    order = range(newest, 0, -1)
    plan.sealers = tuple(_text(seals.get(i, {}).get(b"d", b"")) for i in order)
    plan.results = tuple(results.get(i, "") for i in order)
    if broken:
        plan.verdict = _result(plan, "fail", broken)
    elif seals.get(newest, {}).get(b"cv", b"").lower() == b"fail":
        # RFC 8617 5.2 step 2: a chain its newest sealer declared broken stays broken
        plan.verdict = _result(plan, "fail", "the newest ARC-Seal says cv=fail")
    return plan


def _verify(message: bytes, plan: _Plan, keys: dict[str, KeyRecord]) -> ArcResult:
    try:
        verifier = parsed(dkim.ARC, message)
        cv, _, reason = verifier.verify(dnsfunc=answering_from(keys))
    except binascii.Error:
        cv, reason = dkim.CV_Fail, "b= or bh= of an ARC set is not base64"
    except Exception as e:
        cv, reason = dkim.CV_Fail, f"not verified: {type(e).__name__}"
    if cv == dkim.CV_Pass:
        return _result(plan, "pass", "")
    if cv == dkim.CV_None:
        return ArcResult("none", reason=reason)
    temporary = next((k.temporary for k in keys.values() if k.temporary), "")
    return _result(plan, "fail", temporary or str(reason)[:120], temporary=bool(temporary))


def _result(plan: _Plan, result: str, reason: str, temporary: bool = False) -> ArcResult:
    return ArcResult(result, plan.instances, plan.sealers, plan.results,  # type: ignore[arg-type]
                     reason, temporary=temporary)


def _payload(value: bytes) -> str:
    """An ARC-Authentication-Results value without its i= tag: authserv-id; results."""
    return _text(_INSTANCE_TAG.sub(b"", value, count=1).strip())


def _text(value: bytes) -> str:
    return re.sub(r"\s+", " ", value.decode("utf-8", "replace")).strip()
