"""The one asynchronous DNS client every authentication check asks (SPF, DKIM, DMARC, ARC).

dnspython's asyncresolver against `[auth] nameserver` ("HOST:PORT" or "HOST") or the
system's resolv.conf; every query has `timeout` seconds. Answers (and NXDOMAIN/NODATA) are
kept in one bounded cache for their TTL (negative answers for at most NEGATIVE_TTL), shared
by all checks of the process: the SPF record of a bulk sender is looked up once, not for
every message. A timeout or SERVFAIL is `DnsTemporary` and never cached.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from relay.auth.lookup import DnsTemporary

CACHE_SIZE = 10_000  # answers kept; the oldest used go first
# ...and their bytes: a sender's zone can answer every name with 64 kB of TXT (over TCP),
# and 10,000 of those would be 640 MB. Real SPF/DKIM/DMARC answers are under 4 kB.
CACHE_BYTES = 16 * 1024 * 1024
NEGATIVE_TTL = 300  # seconds an NXDOMAIN/NODATA is believed at most
MAX_TTL = 86_400

# What an answer is reduced to: TXT -> bytes (strings joined), A/AAAA -> address text,
# MX -> (preference, exchange), PTR/CNAME -> target; names without the trailing dot.
Answer = list[object]


def parse_nameserver(text: str) -> tuple[str, int]:
    """'127.0.0.1:5300' -> ('127.0.0.1', 5300); '[::1]:53' and a bare address too."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        return host, int(port.lstrip(":") or 53)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, 53


class Resolver:
    """Cached async lookups; one per process (`[auth]` is read once, reload makes a new one)."""

    def __init__(self, nameserver: str | None = None, timeout: float = 5.0,
                 cache_size: int = CACHE_SIZE, cache_bytes: int = CACHE_BYTES):
        if nameserver:
            r = dns.asyncresolver.Resolver(configure=False)
            host, port = parse_nameserver(nameserver)
            r.nameservers = [host]
            r.port = port
        else:
            r = dns.asyncresolver.Resolver()
        r.timeout = timeout
        r.lifetime = timeout
        r.cache = None  # ours: it also keeps negative answers, and has a bound
        self._resolver = r
        self.timeout = timeout
        self._cache: OrderedDict[tuple[str, str], tuple[float, Answer, int]] = OrderedDict()
        self._size = cache_size
        self._max_bytes = cache_bytes
        self.cached_bytes = 0  # the answers' sizes, as _weight counts them
        self._inflight: dict[tuple[str, str], asyncio.Future[Answer]] = {}
        self.queries = 0  # sent to the name server (not answered from the cache)

    async def txt(self, name: str) -> list[bytes]:
        """The `TxtLookup` of relay/auth/lookup.py."""
        return [a for a in await self.query(name, "TXT") if isinstance(a, bytes)]

    def cached(self, name: str, rdtype: str) -> Answer | None:
        """The answer the cache holds now, or None: for a caller on the loop's thread that
        must not wait (SPF evaluated inline while every answer is cached)."""
        hit = self._cache.get((name.lower().rstrip("."), rdtype.upper()))
        if hit is None or hit[0] <= time.monotonic():
            return None
        return hit[1]

    async def query(self, name: str, rdtype: str) -> Answer:
        """The records of `rdtype` at `name` ([] for NXDOMAIN or NODATA); DnsTemporary when
        the answer cannot be had now. Concurrent asks for one name share one query."""
        key = (name.lower().rstrip("."), rdtype.upper())
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > time.monotonic():
                self._cache.move_to_end(key)
                return hit[1]
            self._forget(key)
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            answer, ttl = await self._ask(*key)
        except BaseException as e:
            fut.set_exception(e if isinstance(e, DnsTemporary) else DnsTemporary(str(e)))
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._inflight[key]
        fut.set_result(answer)
        self._remember(key, answer, ttl)
        return answer

    def _remember(self, key: tuple[str, str], answer: Answer, ttl: float) -> None:
        weight = _weight(key, answer)
        if ttl <= 0 or weight > self._max_bytes // 64:  # one huge answer never fills it
            return
        if key in self._cache:
            self._forget(key)
        self._cache[key] = (time.monotonic() + ttl, answer, weight)
        self.cached_bytes += weight
        while len(self._cache) > self._size or self.cached_bytes > self._max_bytes:
            self._forget(next(iter(self._cache)))

    def _forget(self, key: tuple[str, str]) -> None:
        self.cached_bytes -= self._cache.pop(key)[2]

    async def _ask(self, name: str, rdtype: str) -> tuple[Answer, float]:
        self.queries += 1
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            return [], 0  # not a name DNS can carry (an empty or over-long label)
        try:
            result = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False,
                                                  search=False)
        except dns.resolver.NXDOMAIN:
            return [], NEGATIVE_TTL
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout) as e:
            raise DnsTemporary(f"timeout asking {rdtype} {name}") from e
        except dns.resolver.NoNameservers as e:  # SERVFAIL, REFUSED, unreachable
            raise DnsTemporary(f"no answer for {rdtype} {name}: {e}") from e
        except dns.exception.DNSException as e:
            raise DnsTemporary(f"{rdtype} {name}: {e}") from e
        if result.rrset is None:
            return [], NEGATIVE_TTL
        return [_value(rd) for rd in result.rrset], min(result.rrset.ttl, MAX_TTL)


def _weight(key: tuple[str, str], answer: Answer) -> int:
    """About what an answer costs in memory: its text, and a fixed part per record."""
    return len(key[0]) + sum(64 + len(a) if isinstance(a, (bytes, str)) else 128
                             for a in answer) + 128


def _value(rd: object) -> object:
    rdtype = rd.rdtype  # type: ignore[attr-defined]
    if rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        return b"".join(rd.strings)  # type: ignore[attr-defined]
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return rd.address  # type: ignore[attr-defined]
    if rdtype == dns.rdatatype.MX:
        return (rd.preference, rd.exchange.to_text(True))  # type: ignore[attr-defined]
    if rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME):
        return rd.target.to_text(True)  # type: ignore[attr-defined]
    return rd.to_text()  # type: ignore[attr-defined]
