"""End-of-DATA spam check through spamd (aiospamc), with thresholds per recipient domain.

One aiospamc `Client` (and its connection manager) lives for the whole process: aiospamc's
convenience `check()` builds a connection manager, and with it SSL contexts, on every call,
about 60 ms of client CPU per message, which alone would cap the relay near 16 messages/s.

Outcomes: score >= reject threshold: `550 5.7.1` (reason `spam`). Otherwise ACCEPT with
`X-Spam-Flag` (YES at or over the tag threshold), `X-Spam-Score` and `X-Spam-Status`
headers for the relay to prepend after stripping any the sender supplied. spamd down, slow
or garbled goes to `on_error` (filters/failure.py): `451 4.3.0`, or ACCEPT with an
`X-Floodgate-Unscanned` header. Several spamd addresses are used in turn
(filters/endpoints.py).

The score cache is keyed by the digest of the whole message as spamd sees it, headers and
all: SpamAssassin scores headers (a forged Date, a Message-ID, a spammy Subject), so a score
keyed by the body alone could be earned with innocent headers and spent with spammy ones.
It still answers what repeats byte for byte: retries after a 451, one message sent again
per recipient or per transaction.

Per-domain thresholds: one SMTP reply covers every recipient of a transaction, so the
strictest applies: the lowest tag and the lowest reject threshold among the recipients'
domains. For each domain the most specific rule wins: `a.example.org`, then `example.org`,
then `org`, then the global thresholds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from aiospamc.client import Client
from aiospamc.connections import (
    ConnectionManager,
    TcpConnectionManager,
    Timeout,
    UnixConnectionManager,
)
from aiospamc.exceptions import AIOSpamcConnectionFailed, TimeoutException
from aiospamc.requests import Request

from filters.address import normalise_domain
from filters.base import Action, Context, Stage, Verdict, verdict_note
from filters.endpoints import Rotation, parse_address
from filters.failure import FailurePolicy
from filters.headers import strip_headers_async
from filters.mime import digest
from filters.verdict_cache import VerdictCache

log = logging.getLogger("floodgate.spamassassin")

OversizePolicy = Literal["tempfail", "accept", "reject"]


class Thresholds(NamedTuple):
    tag: float
    reject: float


@dataclass(frozen=True, slots=True)
class SpamResult:
    score: float
    tests: tuple[str, ...]


ThresholdRules = Mapping[str, Thresholds] | Callable[[str], Thresholds | None]


def connection_manager(address: str, timeout: float) -> ConnectionManager:
    """Built once per filter: the expensive part of aiospamc's per-call convenience API."""
    endpoint = parse_address(address)
    t = Timeout(total=timeout, connection=timeout, response=timeout)
    if isinstance(endpoint, str):
        return UnixConnectionManager(Path(endpoint), timeout=t)
    host, port = endpoint
    return TcpConnectionManager(host, port, timeout=t)


@dataclass(frozen=True, slots=True)
class Spamd:
    """One spamd: its client and its share of `concurrency` (each spamd has its own
    --max-children)."""

    address: str
    client: Client
    slots: asyncio.Semaphore

    @classmethod
    def connect_to(cls, address: str, timeout: float, concurrency: int) -> Spamd:
        """Nothing connects yet: each request opens its own connection."""
        return cls(address, Client(connection_manager(address, timeout)),
                   asyncio.Semaphore(concurrency))


def _domain(address: str) -> str:
    """The recipient's domain as the rules are keyed (A-label: `bücher.example` and
    `xn--bcher-kva.example` are one domain, whichever the rule or the client wrote)."""
    return normalise_domain(address.rpartition("@")[2].strip().strip(">"))


class SpamAssassinFilter:
    name = "spamassassin"
    stage = Stage.DATA

    def __init__(
        self,
        address: str | Sequence[str] = "127.0.0.1:783",
        *,
        timeout: float = 30.0,
        on_error: Action = Action.TEMPFAIL,
        tag_score: float = 5.0,
        reject_score: float = 10.0,
        domains: ThresholdRules | None = None,
        max_size: int = 512 * 1024,
        on_oversize: OversizePolicy = "accept",
        concurrency: int = 5,
        cache: VerdictCache[SpamResult] | None = None,
        cache_ttl: float = 600.0,
    ) -> None:
        if reject_score < tag_score:
            raise ValueError("reject_score must not be below tag_score")
        addresses = [address] if isinstance(address, str) else list(address)
        self.rotation = Rotation(
            [Spamd.connect_to(a, timeout, concurrency) for a in addresses], service="spamd",
            unreachable=(AIOSpamcConnectionFailed,), hung=(TimeoutError, TimeoutException))
        self.address = self.rotation.address
        self.request_timeout = timeout
        self.timeout = timeout + 5  # the pipeline's safety net; ours fires first
        self.on_error = FailurePolicy(self.name, on_error, self.stage, "spam check")
        self.defaults = Thresholds(tag_score, reject_score)
        self.domains = domains
        self.max_size = max_size
        self.on_oversize = on_oversize
        self.cache = cache
        self.cache_ttl = cache_ttl
        self.requests = 0  # spamd round trips (tests and stats)

    def reachable(self) -> dict[str, bool]:
        """{spamd address: whether the last request reached it}, for the scanner-up gauge."""
        return self.rotation.reachable()

    # -- thresholds --------------------------------------------------------------------
    def _rule(self, domain: str) -> Thresholds | None:
        if self.domains is None:
            return None
        if callable(self.domains):
            return self.domains(domain)
        labels = domain.split(".")
        for i in range(len(labels)):
            rule = self.domains.get(".".join(labels[i:]))
            if rule is not None:
                return rule
        return None

    def thresholds(self, rcpts: Sequence[str]) -> Thresholds:
        """The strictest thresholds among the recipients' domains (see module docstring)."""
        if self.domains is None:
            return self.defaults
        rules = [self._rule(_domain(r)) or self.defaults for r in rcpts] or [self.defaults]
        return Thresholds(min(r.tag for r in rules), min(r.reject for r in rules))

    # -- verdicts ----------------------------------------------------------------------
    def failed(self, why: str) -> Verdict:
        verdict = self.on_error.failed(why)
        assert verdict is not None  # a DATA check: never "no opinion"
        return verdict

    def oversize(self, size: int) -> Verdict:
        why = f"{size} bytes over limit {self.max_size}"
        if self.on_oversize == "accept":
            return self.on_error.unscanned(why, reason="spam_oversize")
        if self.on_oversize == "reject":
            return Verdict.reject(552, "5.3.4", "spam_oversize",
                                  "Message too large to check for spam", detail=why)
        return self.on_error.tempfail(
            why, reason="spam_oversize",
            text="Message too large to check for spam now, try again later")

    def decide(self, result: SpamResult, limits: Thresholds) -> Verdict:
        tests = ",".join(result.tests) or "none"
        score = f"{round(result.score, 1) + 0.0:.1f}"  # + 0.0: no "-0.0"
        detail = f"score={score} tests={tests}"
        if result.score >= limits.reject:
            return Verdict.reject(550, "5.7.1", "spam",
                                  f"Message refused as spam (score {score})",
                                  detail=detail)
        tagged = result.score >= limits.tag
        headers = (
            ("X-Spam-Flag", "YES" if tagged else "NO"),
            ("X-Spam-Score", score),
            ("X-Spam-Status", f"{'Yes' if tagged else 'No'}, score={score} "
                              f"required={limits.tag:.1f} tests={tests}"),
        )
        return Verdict.accept(250, "2.0.0", "spam_tagged" if tagged else "spam_checked",
                              "Ok", detail=detail, headers=headers)

    # -- the check ---------------------------------------------------------------------
    async def check(self, ctx: Context) -> Verdict | None:
        content = ctx.content
        if self.max_size and len(content) > self.max_size:
            ctx.notes.append(verdict_note(self.name, "spam_oversize", "unscanned"))
            return self.oversize(len(content))
        limits = self.thresholds(ctx.rcpts or ([ctx.rcpt] if ctx.rcpt else []))
        message = await strip_headers_async(content, ("x-spam-",))
        key = digest(message) if self.cache is not None else ""
        result = self.cache.get(key) if self.cache is not None else None
        source = "cached"
        if result is None:
            source = "scanned"
            try:
                result = await self._symbols(message)
            except Exception as e:  # aiospamc raises many unrelated types; all mean "no verdict"
                why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if isinstance(e, TimeoutError):
                    why = f"timeout after {self.request_timeout:g}s"
                log.warning("spamd check failed address=%s error=%s", self.address, why)
                failed = self.failed(why)
                ctx.notes.append(verdict_note(self.name, failed.reason, source))
                return failed
            if self.cache is not None:
                self.cache.put(key, result, self.cache_ttl)
        score = f"{round(result.score, 1) + 0.0:.1f}"
        ctx.notes.append(verdict_note(
            self.name, f"{score}/{limits.reject:.1f},tag:{limits.tag:.1f}", source))
        return self.decide(result, limits)

    async def _request(self, request: Request) -> Any:
        """To the next spamd in turn, within the timeout and that spamd's concurrency."""
        async def send(spamd: Spamd) -> Any:
            async with asyncio.timeout(self.request_timeout), spamd.slots:
                return await spamd.client.request(request)

        return await self.rotation.call(send)

    async def score(self, content: bytes) -> SpamResult:
        """One SYMBOLS round trip: score and rule names, without the rewritten message."""
        return await self._symbols(await strip_headers_async(content, ("x-spam-",)))

    async def _symbols(self, message: bytes) -> SpamResult:
        """score() of a message whose X-Spam-* headers are already gone."""
        self.requests += 1
        response = await self._request(Request("SYMBOLS", body=message))
        spam = response.headers.spam
        if spam is None:
            raise ValueError("spamd reply without a Spam header")
        body = bytes(response.body).decode("ascii", "replace").strip()
        tests = tuple(t.strip() for t in body.split(",") if t.strip())
        return SpamResult(float(spam.score), tests)
