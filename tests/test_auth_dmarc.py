"""DMARC evaluation (relay/auth/dmarc.py) against records served by a real nsd: alignment,
the organisational domain, sp=, pct=, l= signatures, and the resolver's cache."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from relay.auth.dmarc import DmarcResult, check_dmarc, organisational_domain, parse_record
from relay.auth.resolver import Resolver
from relay.auth.verdicts import DkimResult, SpfResult
from tests.dns_server import NameServer, run_nsd, silent_nameserver

ZONE = [
    '_dmarc IN TXT "v=DMARC1; p=reject; sp=quarantine"',
    '_dmarc.strict IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"',
    '_dmarc.half IN TXT "v=DMARC1; p=reject; pct=50"',
    '_dmarc.two IN TXT "v=DMARC1; p=reject"',
    '_dmarc.two IN TXT "v=DMARC1; p=none"',
]


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NameServer]:
    zones = {"brand.example": ZONE, "plain.example": []}
    with run_nsd(tmp_path_factory.mktemp("dmarc"), zones) as server:
        yield server


def mail(from_domain: str) -> bytes:
    return f"From: <x@{from_domain}>\r\nSubject: s\r\n\r\nbody\r\n".encode()


def dmarc(dns: NameServer, from_domain: str, spf: SpfResult | None,
          dkim: list[DkimResult], sample: float | None = None) -> DmarcResult:
    async def run() -> DmarcResult:
        resolver = Resolver(dns.nameserver, timeout=2.0)
        return await check_dmarc(mail(from_domain), spf, dkim, resolver.txt, sample=sample)
    return asyncio.run(run())


def spf(result: str, domain: str) -> SpfResult:
    return SpfResult(result, "mailfrom", domain)  # type: ignore[arg-type]


def dkim(result: str, domain: str, limited: bool = False) -> DkimResult:
    return DkimResult(result, domain, "s1", body_length_limited=limited)  # type: ignore[arg-type]


def test_relaxed_alignment_and_the_organisational_domain(dns: NameServer) -> None:
    # SPF of a subdomain aligns (relaxed) with the organisational domain's From
    got = dmarc(dns, "brand.example", spf("pass", "bounces.brand.example"), [])
    assert (got.result, got.spf_aligned) == ("pass", True)
    # a subdomain without a record: the organisational record's sp= applies
    got = dmarc(dns, "news.brand.example", spf("fail", "news.brand.example"), [])
    assert (got.result, got.requested, got.policy) == ("fail", "quarantine", "quarantine")
    # a pass for another domain does not align
    got = dmarc(dns, "brand.example", spf("pass", "other.example"), [dkim("pass", "other.example")])
    assert (got.result, got.policy) == ("fail", "reject")
    assert organisational_domain("a.b.example.co.uk") == "example.co.uk"


def test_strict_alignment_and_body_length_limited_signatures(dns: NameServer) -> None:
    got = dmarc(dns, "strict.brand.example", spf("pass", "brand.example"),
                [dkim("pass", "mail.strict.brand.example")])
    assert got.result == "fail"
    got = dmarc(dns, "strict.brand.example", None, [dkim("pass", "strict.brand.example")])
    assert (got.result, got.dkim_aligned) == ("pass", True)
    # l=: the signature verifies but the unsigned tail could be anything: never a DMARC pass
    got = dmarc(dns, "brand.example", None, [dkim("pass", "brand.example", limited=True)])
    assert (got.result, got.policy) == ("fail", "reject")


def test_pct_samples_the_failures_the_policy_applies_to(dns: NameServer) -> None:
    inside = dmarc(dns, "half.brand.example", spf("fail", "half.brand.example"), [], sample=10)
    outside = dmarc(dns, "half.brand.example", spf("fail", "half.brand.example"), [], sample=90)
    assert (inside.policy, outside.policy) == ("reject", "quarantine")
    assert "sampled out" in outside.reason


def test_no_record_two_records_and_no_from(dns: NameServer) -> None:
    assert dmarc(dns, "plain.example", spf("fail", "plain.example"), []).result == "none"
    assert dmarc(dns, "two.brand.example", spf("fail", "x.example"), []).result == "none"
    assert parse_record("v=DMARC1; p=bogus") is None
    rua = parse_record("v=DMARC1; p=bogus; rua=mailto:a@b.example")
    assert rua is not None and rua.p == "none"

    async def no_from() -> DmarcResult:
        resolver = Resolver(dns.nameserver)
        return await check_dmarc(b"Subject: s\r\n\r\nx\r\n", None, [], resolver.txt)
    assert asyncio.run(no_from()).result == "permerror"


def test_temperror_when_dns_times_out_or_an_aligned_check_could_not_be_made(
        dns: NameServer) -> None:
    got = dmarc(dns, "brand.example", spf("temperror", "brand.example"), [])
    assert got.result == "temperror" and got.policy == "none"
    with silent_nameserver() as silent:
        async def run() -> DmarcResult:
            resolver = Resolver(silent, timeout=0.5)
            return await check_dmarc(mail("brand.example"), spf("fail", "brand.example"), [],
                                     resolver.txt)
        assert asyncio.run(run()).result == "temperror"


def test_the_cache_answers_again_without_asking(dns: NameServer) -> None:
    async def run() -> tuple[int, int]:
        resolver = Resolver(dns.nameserver)
        for _ in range(3):
            await check_dmarc(mail("news.brand.example"), None, [], resolver.txt)
        first = resolver.queries
        await asyncio.gather(*(resolver.txt("_dmarc.two.brand.example") for _ in range(5)))
        return first, resolver.queries - first
    first, after = asyncio.run(run())
    assert first == 2  # _dmarc.news (NXDOMAIN, cached too) and _dmarc.brand.example, once
    assert after == 1  # five asks at once: one query
