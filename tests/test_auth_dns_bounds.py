"""The authentication checks' DNS cache against a sender's zone that answers every name with
as much TXT as DNS can carry (64 kB over TCP): what it keeps is bounded in bytes, not only in
answers (a real nsd serving the zone)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from relay.auth.resolver import Resolver
from tests.dns_server import NameServer, run_nsd

# one TXT record of 240 strings of 250 bytes: 60 kB, answered over TCP
BIG = " ".join(['"' + "v=spf1 " + "a" * 243 + '"'] + ['"' + "b" * 250 + '"'] * 239)


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NameServer]:
    with run_nsd(tmp_path_factory.mktemp("big"), {"big.test": [f"* IN TXT {BIG}"]}) as server:
        yield server


def test_huge_answers_for_ever_new_names_keep_the_cache_bounded(dns: NameServer) -> None:
    budget = 16 * 1024 * 1024  # relay.auth.resolver.CACHE_BYTES

    async def run() -> Resolver:
        resolver = Resolver(dns.nameserver, timeout=30.0)  # a loaded machine: no timeouts
        for i in range(400):  # 24 MB of answers
            [txt] = await resolver.txt(f"n{i}.big.test")
            assert len(txt) == 60_000
        return resolver

    resolver = asyncio.run(run())
    kept = sum(len(a) for entry in resolver._cache.values() for a in entry[1])
    assert kept <= budget, f"{kept} bytes of answers cached"
    assert resolver._cache  # still a cache: the latest answers are kept
