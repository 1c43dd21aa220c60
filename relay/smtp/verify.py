"""Recipient verification for hosted domains that ask for it ([domains."x".verify]): an address
the alias table does not hold is looked up in the domain's directory (LDAP) and/or probed at
its own server (relay/delivery/probe.py), as Postfix's reject_unverified_recipient.

Why it cannot amplify a dictionary attack:
- the alias table is asked first, and the gate (blocked hosts) runs before RCPT gets here;
- answers are cached per address, found and not found with their own TTLs, in this process
  (not shared between relay processes or nodes: each keeps its own, bounded, LRU);
- concurrent lookups of one address share one lookup (single flight);
- each domain has a token bucket (`rate`, `burst`): a lookup past it is not made and the
  recipient gets `450 4.1.1` (try again later), reason `verify_limited`, which the scorer
  counts like an unknown recipient, so the attacker is blocked before long. Not accept:
  that would take mail for unknown addresses and bounce it later (backscatter). Not 550: a
  real user would bounce. The sender of real mail retries; a dictionary attack learns
  nothing and costs the next hop nothing.
A lookup that cannot answer (no connection, timeout, a 4xx) is `450 4.1.1` too and is not
cached: the next attempt asks again, within the bucket.

Sources, when both are configured: LDAP first (one local query), then the probe; any that
finds the address accepts it, `550 5.1.1` only when every source said unknown.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from filters.recipients import Lookup
from relay.config.domains import DomainConfig
from relay.config.verify import VerifyConfig
from relay.smtp.directory import Directory

Probe = Callable[[str, str], Awaitable[tuple[bool | None, str]]]  # (hop, address)


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self) -> bool:
        now = self.clock()
        if self.tokens < 0:
            self.tokens, self.stamp = float(self.burst), now
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(slots=True)
class DomainVerifier:
    """One domain's settings, cache, bucket and lookups in flight."""

    settings: VerifyConfig
    hop: str
    probe: Probe
    clock: Callable[[], float] = time.monotonic
    bucket: TokenBucket = field(init=False)
    directory: Directory | None = field(init=False)
    # address -> (known, expiry); no reply text: the event of the lookup itself has it, and
    # a reply text in every cached refusal's event cost a third of the rate (scenario 13)
    cache: OrderedDict[str, tuple[bool, float]] = field(default_factory=OrderedDict)
    flying: dict[str, asyncio.Task[Lookup]] = field(default_factory=dict)
    lookups: int = 0  # made (not cached, not joined): for metrics and the tests' logs

    def __post_init__(self) -> None:
        s = self.settings
        self.bucket = TokenBucket(s.rate, s.burst, self.clock)
        self.directory = None if not s.ldap_url else Directory(
            s.ldap_url, s.ldap_base, s.ldap_filter, s.ldap_bind_dn, s.ldap_bind_password,
            s.timeout)

    async def verify(self, address: str) -> Lookup:
        key = address.lower()  # one entry however the attacker writes the case
        hit = self.cache.get(key)
        if hit is not None:
            known, expires = hit
            if expires > self.clock():
                self.cache.move_to_end(key)
                return Lookup(known, "cached")
            del self.cache[key]
        task = self.flying.get(key)
        if task is None:
            if not self.bucket.take():
                return Lookup(None, "verification rate limit reached for the domain",
                              limited=True)
            task = asyncio.create_task(self._lookup(address, key))
            self.flying[key] = task
            task.add_done_callback(lambda _t: self.flying.pop(key, None))
        # shielded: a client hanging up does not cancel the lookup others wait for
        return await asyncio.shield(task)

    async def _lookup(self, address: str, key: str) -> Lookup:
        self.lookups += 1
        s = self.settings
        answers: list[str] = []
        unsure = False
        try:
            async with asyncio.timeout(s.timeout):
                if self.directory is not None:
                    known, detail = await asyncio.to_thread(self.directory.lookup, address)
                    answers.append(detail)
                    if known:
                        return self._remember(key, True, detail)
                    unsure = unsure or known is None
                if s.smtp:
                    known, detail = await self.probe(self.hop, address)
                    answers.append(detail)
                    if known:
                        return self._remember(key, True, detail)
                    unsure = unsure or known is None
        except TimeoutError:
            return Lookup(None, f"verification timed out after {s.timeout:g}s")
        detail = "; ".join(answers)
        if unsure:
            return Lookup(None, detail)
        return self._remember(key, False, detail)

    def _remember(self, key: str, known: bool, detail: str) -> Lookup:
        ttl = self.settings.positive_ttl if known else self.settings.negative_ttl
        self.cache[key] = (known, self.clock() + ttl)
        self.cache.move_to_end(key)
        while len(self.cache) > self.settings.cache_size:
            self.cache.popitem(last=False)
        return Lookup(known, detail)


class RecipientVerifier:
    """The domains with [domains."x".verify]; `verifies` and `verify` are RecipientFilter's."""

    def __init__(self, hosted: dict[str, DomainConfig], probe: Probe,
                 clock: Callable[[], float] = time.monotonic):
        self.domains = {name: DomainVerifier(d.verify, d.next_hop, probe, clock)
                        for name, d in hosted.items() if d.verify is not None}

    def verifies(self, domain: str) -> bool:
        return domain in self.domains

    async def verify(self, local: str, domain: str) -> Lookup:
        return await self.domains[domain].verify(f"{local}@{domain}")

    @property
    def timeout(self) -> float:
        """The longest lookup: the RCPT check's own timeout must be longer."""
        return max((d.settings.timeout for d in self.domains.values()), default=0.0)
