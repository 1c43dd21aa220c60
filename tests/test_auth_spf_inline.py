"""SPF with the answers cached is evaluated on the event loop, without the thread pool
(relay/auth/spf.py): the second check of a sender makes no thread hand-off, and says what
the pool said. A miss anywhere (here: a name not yet asked) goes to the pool."""

from __future__ import annotations

import asyncio

from relay.auth import spf as spf_module
from relay.auth.resolver import Resolver
from relay.auth.spf import check_spf
from tests.dns_server import run_nsd

ZONE = {"sender.test": [
    '@ TXT "v=spf1 mx include:_spf.sender.test exp=why.sender.test -all"',
    '_spf TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    'why TXT "not from %{i}"',
    "@ MX 10 mx",
    "mx A 198.51.100.7",
    'other TXT "v=spf1 -all"',
]}


def test_a_cached_check_runs_on_the_loop_and_a_miss_goes_to_the_pool(tmp_path, monkeypatch):
    pooled: list[str] = []
    in_pool = spf_module._in_pool

    async def counting(*args, **kw):  # type: ignore[no-untyped-def]
        pooled.append(args[3])
        return await in_pool(*args, **kw)

    monkeypatch.setattr(spf_module, "_in_pool", counting)
    with run_nsd(tmp_path, ZONE) as server:
        async def run() -> list[tuple[str, str]]:
            resolver = Resolver(server.nameserver, timeout=2.0)
            out = []
            for ip, sender in (("192.0.2.9", "a@sender.test"), ("192.0.2.9", "a@sender.test"),
                               ("198.51.100.7", "a@sender.test"),
                               ("203.0.113.5", "a@sender.test"),
                               ("203.0.113.9", "b@other.sender.test")):
                got = await check_spf(resolver, ip, sender, "helo.test")
                out.append((got.result, got.reason))
            return out

        results = asyncio.run(run())
    assert [r for r, _ in results] == ["pass", "pass", "pass", "fail", "fail"]
    assert "not from 203.0.113.5" in results[3][1]  # exp=, answered from the cache
    # the first check fills the cache through the pool (the record, its include, its mx
    # and its exp=); the next three run inline; a sender not seen before misses: pool
    assert pooled == ["192.0.2.9", "203.0.113.9"]


def test_no_thread_when_cached(tmp_path, monkeypatch):
    with run_nsd(tmp_path, ZONE) as server:
        async def run() -> str:
            resolver = Resolver(server.nameserver, timeout=2.0)
            await check_spf(resolver, "192.0.2.9", "a@sender.test", "helo.test")

            async def refuse(*args, **kw):  # type: ignore[no-untyped-def]
                raise AssertionError("went to the thread pool with every answer cached")

            monkeypatch.setattr(spf_module, "_in_pool", refuse)
            return (await check_spf(resolver, "192.0.2.9", "a@sender.test", "helo")).result

        assert asyncio.run(run()) == "pass"
