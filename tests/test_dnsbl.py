"""DNSBL filter against a real rbldnsd serving fixtures/dnsbl/, plus a silent nameserver.

Fixture addresses (fixtures/dnsbl/): zen.example lists 127.0.0.2 (code .2), .3 (.4), .5 (.4
and .10), .20 (.20, outside the counted range), .30/.31 (error codes 127.255.255.254/252),
.40, .42 (.20); bl.example lists .40, .41, .42; IPv6 2001:db8::2 and 2001:db8:bad::/48.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from filters.base import Action, Context, Stage
from filters.dnsbl import (
    DnsblFilter,
    DnsblResult,
    Listing,
    Zone,
    ZoneAnswer,
    parse_codes,
    parse_site,
    reversed_name,
)
from filters.verdict_cache import VerdictCache
from relay.config.dnsbl import DnsblConfig
from relay.service.scanners import build_dnsbl
from relay.smtp.pipeline import Pipeline
from tests.dnsbl_fixtures import Rbldnsd, run_rbldnsd, silent_nameserver


@pytest.fixture(scope="module")
def rbldnsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rbldnsd]:
    """One real rbldnsd for the module (queries are counted by name, so sharing is safe)."""
    with run_rbldnsd(tmp_path_factory.mktemp("rbldnsd")) as server:
        yield server


ZEN = Zone("zen.example", 3, ("127.0.0.2-127.0.0.11",))
BL = Zone("bl.example", 1, ("127.0.0.2",))


class Clock:
    """The cache's clock, moved by hand: TTLs are tested without waiting for them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(rbl: Rbldnsd, *zones: Zone, reject_score: int = 4, clock: Clock | None = None,
         **kw: float) -> DnsblFilter:
    cache = VerdictCache[ZoneAnswer](1000, clock=clock or Clock())
    return DnsblFilter(zones or (ZEN, BL), reject_score=reject_score,
                       nameserver=rbl.nameserver, cache=cache, **kw)


def lookup(f: DnsblFilter, ip: str) -> DnsblResult:
    return asyncio.run(f.lookup(ip))


def check(f: DnsblFilter, ip: str):
    return asyncio.run(f.check(Context(client=ip)))


# -- parsing -----------------------------------------------------------------------------

def test_query_names() -> None:
    assert reversed_name("192.0.2.7") == "7.2.0.192"
    assert reversed_name("::ffff:192.0.2.7") == "7.2.0.192"  # dual-stack socket, IPv4 client
    assert reversed_name("2001:db8::2") == ".".join("2" + "0" * 23 + "8bd01002")
    with pytest.raises(ValueError):
        reversed_name("unix-socket")


def test_code_patterns() -> None:
    n = lambda ip: int.from_bytes(bytes(map(int, ip.split("."))), "big")  # noqa: E731
    assert parse_codes("127.0.0.2-127.0.0.11") == ((n("127.0.0.2"), n("127.0.0.11")),)
    assert parse_codes("127.0.0.[2..11]") == parse_codes("127.0.0.2-127.0.0.11")
    assert parse_codes("127.0.0.0/30") == ((n("127.0.0.0"), n("127.0.0.3")),)
    assert set(parse_codes("127.0.[0..1].[2;4]")) == {
        (n(ip), n(ip)) for ip in ("127.0.0.2", "127.0.0.4", "127.0.1.2", "127.0.1.4")}
    for bad in ("127.0.0.300", "127.0.0.[11..2]", "127.0.0.9-127.0.0.2", "listed", ""):
        with pytest.raises(ValueError):
            parse_codes(bad)
    assert parse_site("zen.example=127.0.0.[2..11]*3") == ("zen.example", ("127.0.0.[2..11]",), 3)
    assert parse_site("List.Example.") == ("list.example", (), 1)
    assert parse_site("wl.example*-2") == ("wl.example", (), -2)


def test_error_codes_never_count_even_when_any_code_counts() -> None:
    anything = Zone("any.example")
    assert anything.counts("127.0.0.2") and anything.counts("127.0.1.9")
    for code in ("127.255.255.254", "127.255.255.252", "127.255.255.255", "127.0.0.1",
                 "10.1.2.3"):
        assert not anything.counts(code)


# -- configuration -----------------------------------------------------------------------

def test_config_table_form_and_defaults() -> None:
    cfg = DnsblConfig.model_validate(tomllib.loads("""
        reject_score = 4
        nameserver = "127.0.0.1:5300"
        [zones]
        "zen.example" = { weight = 3, codes = ["127.0.0.2-127.0.0.11"] }
        "bl.example" = "127.0.0.2*1"
        "Slow.Example." = { timeout = 0.5 }
    """))
    assert cfg.zones["zen.example"].weight == 3
    assert cfg.zones["bl.example"].codes == ("127.0.0.2",)
    assert cfg.zones["slow.example"].timeout == 0.5 and cfg.zones["slow.example"].weight == 1
    assert (cfg.timeout, cfg.on_error, cfg.cache.negative_ttl) == (2.0, "accept", 300.0)
    f = build_dnsbl(cfg)
    assert f is not None and f.stage == Stage.CONNECT and f.on_error.action == Action.ACCEPT
    assert [(z.name, z.weight) for z in f.zones] == [
        ("zen.example", 3), ("bl.example", 1), ("slow.example", 1)]
    assert f.timeout > 2.0  # the pipeline's guard outlasts every zone's own timeout


def test_config_postscreen_list() -> None:
    cfg = DnsblConfig(zones=["zen.example=127.0.0.[2..11]*3", "bl.example"],  # type: ignore[arg-type]
                      reject_score=3, timeout="2s", cache={"max_ttl": "1h"})  # type: ignore[arg-type]
    assert cfg.zones["zen.example"].codes == ("127.0.0.[2..11]",)
    assert cfg.zones["bl.example"].weight == 1 and cfg.cache.max_ttl == 3600.0
    assert build_dnsbl(cfg.model_copy(update={"enabled": False})) is None
    assert build_dnsbl(DnsblConfig()) is None


@pytest.mark.parametrize("bad, where", [
    ({"zones": {"zen.example": {"codes": ["127.0.0.[2..300]"]}}}, "codes"),
    ({"zones": {"zen.example": {"wieght": 3}}}, "wieght"),
    ({"zones": ["zen.example*3", "ZEN.example"]}, "twice"),
    ({"zones": ["zen.example=listed"]}, "zones"),
    ({"nameserver": "resolver.example:53"}, "nameserver"),
    ({"reject_scor": 3}, "reject_scor"),
    ({"cache": {"min_ttl": 60, "max_ttl": 10}}, "max_ttl"),
])
def test_config_errors_name_the_key(bad: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as e:
        DnsblConfig.model_validate(bad)
    assert where in str(e.value)


# -- against rbldnsd ---------------------------------------------------------------------

def test_listed_unlisted_and_multiple_codes(rbldnsd: Rbldnsd) -> None:
    f = make(rbldnsd, reject_score=3)
    assert lookup(f, "127.0.0.2").listings == (Listing("zen.example", ("127.0.0.2",), 3),)
    assert lookup(f, "127.0.0.5").listings == (
        Listing("zen.example", ("127.0.0.10", "127.0.0.4"), 3),)
    assert lookup(f, "127.0.0.9") == DnsblResult("127.0.0.9")
    v = check(f, "127.0.0.2")
    assert v is not None and v.action == Action.REJECT and v.reason == "dnsbl"
    assert v.reply == "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using zen.example"
    assert "zen.example=127.0.0.2*3" in v.detail
    assert check(f, "127.0.0.9") is None


def test_ipv6_nibbles(rbldnsd: Rbldnsd) -> None:
    f = make(rbldnsd, reject_score=3)
    assert lookup(f, "2001:db8::2").score == 3
    assert lookup(f, "2001:db8:bad::7").listings == (Listing("zen.example", ("127.0.0.3",), 3),)
    assert lookup(f, "2001:db8::1") == DnsblResult("2001:db8::1")
    v = check(f, "2001:db8::2")
    assert v is not None and "client [2001:db8::2] blocked using zen.example" in v.text


def test_error_answers_are_errors_not_listings(rbldnsd: Rbldnsd) -> None:
    f = make(rbldnsd, Zone("zen.example", 5), reject_score=1)  # any code would count
    for ip, code in (("127.0.0.30", "127.255.255.254"), ("127.0.0.31", "127.255.255.252")):
        r = lookup(f, ip)
        assert r.score == 0 and r.listings == ()
        assert r.errors == (("zen.example", f"error code {code}"),)
        assert check(f, ip) is None


def test_weights_sum_to_reject_score(rbldnsd: Rbldnsd) -> None:
    f = make(rbldnsd, reject_score=4)
    r = lookup(f, "127.0.0.40")
    assert r.score == 4 and {z for z, _, _ in r.listings} == {"zen.example", "bl.example"}
    v = check(f, "127.0.0.40")
    assert v is not None and v.text.endswith("blocked using zen.example")  # heaviest list
    assert "bl.example=127.0.0.2*1" in v.detail
    assert lookup(f, "127.0.0.41").score == 1 and check(f, "127.0.0.41") is None
    assert lookup(f, "127.0.0.2").score == 3 and check(f, "127.0.0.2") is None


def test_codes_outside_the_counted_range_are_ignored(rbldnsd: Rbldnsd) -> None:
    f = make(rbldnsd, reject_score=1)
    r = lookup(f, "127.0.0.20")
    assert r.score == 0 and r.ignored == (("zen.example", ("127.0.0.20",)),) and not r.errors
    assert check(f, "127.0.0.20") is None
    r = lookup(f, "127.0.0.42")  # zen's .20 ignored, bl's .2 counts
    assert r.score == 1 and r.listings == (Listing("bl.example", ("127.0.0.2",), 1),)


def test_postscreen_config_against_rbldnsd(rbldnsd: Rbldnsd) -> None:
    cfg = DnsblConfig(zones=["zen.example=127.0.0.[2..4]*3", "bl.example*2"],  # type: ignore[arg-type]
                      reject_score=5, nameserver=rbldnsd.nameserver)
    f = build_dnsbl(cfg)
    assert f is not None
    assert lookup(f, "127.0.0.5").score == 3  # .4 counts, .10 is outside [2..4]
    assert check(f, "127.0.0.40") is not None  # 3 + 2
    assert check(f, "127.0.0.42") is None  # .20 outside: only bl's 2


def test_silent_zone_times_out_quickly_and_blocks_nothing(rbldnsd: Rbldnsd) -> None:
    with silent_nameserver() as dead:
        slow = Zone("slow.example", 10, nameserver=dead, timeout=0.3)
        f = make(rbldnsd, ZEN, slow, reject_score=3)
        start = time.monotonic()
        r = lookup(f, "127.0.0.9")
        elapsed = time.monotonic() - start
        assert r.errors == (("slow.example", "timeout"),) and r.score == 0
        assert elapsed < 4.0  # the zone's 0.3s, not dnspython's default lifetime (5s)
        # The other zones still count; the silent one neither blocks nor tempfails.
        assert lookup(f, "127.0.0.2").listings == (Listing("zen.example", ("127.0.0.2",), 3),)
        assert check(f, "127.0.0.9") is None
        assert asyncio.run(Pipeline([f]).run(Stage.CONNECT, Context("127.0.0.9"))) is None
        assert f.stats.timeouts == 4 and f.stats.failures == 0  # timeouts are not cached


def test_pipeline_refuses_at_connect(rbldnsd: Rbldnsd) -> None:
    v = asyncio.run(Pipeline([make(rbldnsd)]).run(Stage.CONNECT, Context("127.0.0.40")))
    assert v is not None and v.code == 554 and v.status == "5.7.1" and v.reason == "dnsbl"


def test_cache_hit_sends_no_second_query(rbldnsd: Rbldnsd) -> None:
    f = make(rbldnsd, ZEN)
    name = "3.0.0.127.zen.example"
    rbldnsd.barrier()
    before = rbldnsd.queries(name)
    assert lookup(f, "127.0.0.3").score == 3
    assert lookup(f, "127.0.0.3").score == 3
    assert check(f, "127.0.0.3") is None
    rbldnsd.barrier()
    assert rbldnsd.queries(name) == before + 1  # counted by rbldnsd itself
    assert (f.stats.queries, f.stats.cache_hits) == (1, 2)


def test_concurrent_lookups_share_one_query(rbldnsd: Rbldnsd) -> None:
    f = make(rbldnsd)

    async def burst() -> list[DnsblResult]:
        return await asyncio.gather(*(f.lookup("127.0.0.41") for _ in range(20)))

    assert {r.score for r in asyncio.run(burst())} == {1}
    assert f.stats.queries == 2  # one per zone, however many connections asked


def test_cache_follows_ttls(rbldnsd: Rbldnsd) -> None:
    """Positive answers live for their TTL (300s in the zone file, clamped by max_ttl);
    NXDOMAIN for the SOA minimum (60s), capped by negative_ttl."""
    clock = Clock()
    f = make(rbldnsd, ZEN, clock=clock, max_ttl=200.0)
    lookup(f, "127.0.0.2")
    lookup(f, "127.0.0.9")
    assert f.stats.queries == 2
    clock.now += 59
    lookup(f, "127.0.0.2")
    lookup(f, "127.0.0.9")
    assert f.stats.queries == 2
    clock.now += 2  # 61s: the negative answer expired
    lookup(f, "127.0.0.2")
    lookup(f, "127.0.0.9")
    assert f.stats.queries == 3
    clock.now += 140  # 201s: past max_ttl
    lookup(f, "127.0.0.2")
    assert f.stats.queries == 4

    capped = make(rbldnsd, ZEN, clock=clock, negative_ttl=10.0)
    lookup(capped, "127.0.0.9")
    clock.now += 11
    lookup(capped, "127.0.0.9")
    assert capped.stats.queries == 2


def test_not_an_address_is_not_looked_up(rbldnsd: Rbldnsd) -> None:
    f = make(rbldnsd)
    assert check(f, "unknown") is None and f.stats.queries == 0
