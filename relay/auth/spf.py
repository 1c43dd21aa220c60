"""SPF (RFC 7208) for the MAIL FROM identity, or the HELO name when MAIL FROM is empty.

pyspf evaluates the record (it passes the RFC 7208 test suite: macros, include/redirect,
exp=, the 10-lookup and 2-void-lookup limits); its DNS is replaced by ours. pyspf is
synchronous, so a check is first evaluated on the loop answering only from the resolver's
cache (the common case once a sender has been seen: about 0.1 ms, no thread hand-off); the
first answer missing from the cache abandons that and the check runs in a small thread pool,
each of its lookups sent to the event loop's `Resolver` (run_coroutine_threadsafe) and
waited for in that thread: the loop never blocks, and every lookup goes through the one
async resolver with its timeout and its shared TTL cache.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import threading
from collections.abc import Iterator
from typing import Any

import spf as pyspf

from relay.auth.lookup import DnsTemporary
from relay.auth.resolver import Resolver
from relay.auth.verdicts import SpfResult

THREADS = 4  # checks at once; each mostly waits for the loop's answers
_POOL = concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="spf")
_LOCAL = threading.local()
TOTAL_TIME = 20.0  # RFC 7208 4.6.4: at least 20 seconds for the whole evaluation
_TYPES = ("A", "AAAA", "MX", "PTR", "TXT", "SPF", "CNAME")


class _Lookup:
    """The DNS pyspf asks in one worker thread: answers come from the loop's Resolver."""

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop):
        self.resolver = resolver
        self.loop = loop
        self.cancelled = False

    def __call__(self, name: str, qtype: str, strict: object = True,
                 timeout: object = None) -> Iterator[tuple[tuple[str, str], Any]]:
        if self.cancelled:
            raise pyspf.TempError("DNS: the check was given up")
        if qtype not in _TYPES:
            return iter(())
        future = asyncio.run_coroutine_threadsafe(self.resolver.query(name, qtype), self.loop)
        try:
            answer = future.result(self.resolver.timeout * 2 + 1)
        except (DnsTemporary, concurrent.futures.TimeoutError) as e:
            future.cancel()
            raise pyspf.TempError(f"DNS {e or 'timeout'}") from None
        key = (name.rstrip("."), qtype)
        if qtype in ("TXT", "SPF"):
            return iter([(key, (v,)) for v in answer])
        return iter([(key, v) for v in answer])


class _Miss(Exception):
    """The inline evaluation needs an answer the cache does not hold: go to the pool."""


class _CacheOnly:
    """The DNS pyspf asks when evaluated on the loop: the resolver's cache, nothing else."""

    def __init__(self, resolver: Resolver):
        self.resolver = resolver
        # pyspf swallows any exception in two places (exp=, ptr), so a miss is also noted
        self.missed = False

    def __call__(self, name: str, qtype: str, strict: object = True,
                 timeout: object = None) -> Iterator[tuple[tuple[str, str], Any]]:
        if qtype not in _TYPES:
            return iter(())
        answer = self.resolver.cached(name, qtype)
        if answer is None:
            self.missed = True
            raise _Miss(name, qtype)
        key = (name.rstrip("."), qtype)
        if qtype in ("TXT", "SPF"):
            return iter([(key, (v,)) for v in answer])
        return iter([(key, v) for v in answer])


def _dispatch(name: str, qtype: str, strict: object = True,
              timeout: object = None) -> Iterator[tuple[tuple[str, str], Any]]:
    lookup: _Lookup | None = getattr(_LOCAL, "lookup", None)
    if lookup is None:
        raise pyspf.TempError("DNS: no resolver for this thread")
    return lookup(name, qtype, strict, timeout)


# pyspf calls its module-level DNSLookup; ours answers from the calling thread's resolver.
pyspf.DNSLookup = _dispatch


def _run(lookup: _Lookup | _CacheOnly, ip: str, mail_from: str, helo: str
         ) -> tuple[str, str]:
    _LOCAL.lookup = lookup
    try:
        q = pyspf.query(i=ip, s=mail_from, h=helo, querytime=TOTAL_TIME)
        result, _code, explanation = q.check()
        return str(result), str(explanation)
    finally:
        _LOCAL.lookup = None


def identity(mail_from: str, helo: str) -> tuple[str, str]:
    """('mailfrom', domain) or ('helo', name) when MAIL FROM is the null sender."""
    address = mail_from.strip().strip("<>")
    if address:
        return "mailfrom", address.rpartition("@")[2].lower()
    return "helo", helo.strip().lower()


async def check_spf(resolver: Resolver, ip: str, mail_from: str, helo: str) -> SpfResult:
    """The SPF result for this client; a DNS failure is temperror, never fail."""
    kind, domain = identity(mail_from, helo)
    address = mail_from.strip().strip("<>")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return SpfResult("none", kind, domain, f"client address {ip!r} is not an IP")  # type: ignore[arg-type]
    if not domain:
        return SpfResult("none", kind, domain, "no identity to check")  # type: ignore[arg-type]
    inline = _CacheOnly(resolver)
    try:  # on the loop, from the cache alone
        result, explanation = _run(inline, ip, address, helo.strip())
    except _Miss:
        inline.missed = True
    if inline.missed:
        result, explanation = await _in_pool(resolver, kind, domain, ip, address, helo)
    if not result:  # the pool gave up: too long
        return SpfResult("temperror", kind, domain, explanation)  # type: ignore[arg-type]
    result = {"error": "temperror", "unknown": "permerror", "ambiguous": "permerror"}.get(
        result, result)
    if result not in ("pass", "fail", "softfail", "neutral", "none", "temperror",
                      "permerror"):
        result = "permerror"
    return SpfResult(result, kind, domain, explanation)  # type: ignore[arg-type]


async def _in_pool(resolver: Resolver, kind: str, domain: str, ip: str, address: str,
                   helo: str) -> tuple[str, str]:
    """The check in the thread pool, its lookups answered by the loop's resolver;
    ("", why) when it takes longer than RFC 7208's total time."""
    lookup = _Lookup(resolver, asyncio.get_running_loop())
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(TOTAL_TIME + resolver.timeout):
            result, explanation = await loop.run_in_executor(
                _POOL, _run, lookup, ip, address, helo.strip())
    except TimeoutError:
        lookup.cancelled = True
        return "", "SPF evaluation took too long"
    except asyncio.CancelledError:
        lookup.cancelled = True
        raise
    return result, explanation
