"""Scoring and block decisions as pure functions, with known answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from blocklist.hosts import host_key
from blocklist.scoring import BlockState, Offences, Protection, cutoff, decide, score_hosts
from relay.hosts_config import DEFAULT_WEIGHTS, BlocklistConfig

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
W = dict(DEFAULT_WEIGHTS)
NOBODY = Protection.build([], [], loopback=False)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def run(rows: list[Offences], blocks: dict[str, BlockState] | None = None,
        protection: Protection = NOBODY, cfg: BlocklistConfig | None = None):  # type: ignore[no-untyped-def]
    cfg = cfg or BlocklistConfig()
    return decide(score_hosts(rows, W), blocks or {}, threshold=10, duration=cfg.duration,
                  recidive_window=cfg.recidive_window, protected=protection.why, weights=W,
                  now=NOW)


def test_weights_sum_per_host() -> None:
    scores = score_hosts([Offences("192.0.2.1", "unknown_rcpt", 8, ago(60), ago(10)),
                          Offences("192.0.2.1", "virus", 1, ago(30), ago(30)),
                          Offences("192.0.2.1", "accepted", 2, ago(5), ago(1)),
                          Offences("192.0.2.2", "connect", 50, ago(5), ago(1))], W)
    assert scores["192.0.2.1"].score == 8 + 5 - 2
    assert scores["192.0.2.1"].last_offence == ago(10)  # accepted mail is no offence
    assert scores["192.0.2.1"].summary(W) == "unknown_rcpt=8 virus=1"
    assert scores["192.0.2.2"].score == 0


def test_threshold_makes_a_block_from_the_last_offence() -> None:
    [d] = run([Offences("192.0.2.1", "unknown_rcpt", 10, ago(100), ago(10)),
               Offences("192.0.2.3", "unknown_rcpt", 9, ago(100), ago(10))])
    assert (d.network, d.level, d.new, d.source) == ("192.0.2.1", 1, True, "auto")
    assert d.expires == ago(10) + timedelta(hours=24)
    assert d.first_seen == ago(100)


def test_protected_hosts_are_never_blocked() -> None:
    rows = [Offences(h, "trap", 3, ago(9), ago(9))
            for h in ("192.0.2.1", "127.0.0.2", "198.51.100.7", "2001:db8:1::/64")]
    protection = Protection.build(["198.51.100.0/24", "2001:db8:1::5"], ["192.0.2.1"], True)
    assert run(rows, protection=protection) == []
    assert protection.why("127.0.0.2") == "loopback"
    assert protection.why("192.0.2.1") == "one of the relay's own listen addresses"
    assert protection.why("198.51.100.7") == "allowlisted (198.51.100.0/24)"
    assert protection.why("2001:db8:1::/64") == "allowlisted (2001:db8:1::5/128)"
    assert protection.why("192.0.2.99") is None


def test_offending_while_blocked_extends_the_block() -> None:
    block = BlockState("192.0.2.1", ago(3600), ago(600), NOW + timedelta(hours=1), 1, "auto",
                       12, "unknown_rcpt=12")
    [d] = run([Offences("192.0.2.1", "blocked", 1, ago(5), ago(5))], {"192.0.2.1": block})
    assert not d.new
    assert d.expires == ago(5) + timedelta(hours=24)
    assert d.first_seen == block.first_seen
    assert d.level == 1
    assert cutoff(block, NOW) == block.last_seen


def test_coming_back_soon_after_escalates() -> None:
    expired = BlockState("192.0.2.1", ago(90000), ago(86500), ago(100), 2, "auto")
    [d] = run([Offences("192.0.2.1", "unknown_rcpt", 10, ago(50), ago(5))],
              {"192.0.2.1": expired})
    assert d.level == 3
    assert d.expires == ago(5) + timedelta(hours=24 * 4)
    long_ago = BlockState("192.0.2.1", ago(10**7), ago(10**7), ago(10**6), 4, "auto")
    [d] = run([Offences("192.0.2.1", "unknown_rcpt", 10, ago(50), ago(5))],
              {"192.0.2.1": long_ago})
    assert d.level == 1


def test_escalation_is_capped() -> None:
    cfg = BlocklistConfig(block_time="1h", max_block_time="5h", escalation=3)
    assert [cfg.duration(n) for n in (1, 2, 3)] == [3600, 3 * 3600, 5 * 3600]


def test_ipv6_hosts_count_by_prefix() -> None:
    assert host_key("2001:db8:1:2:3::4") == "2001:db8:1:2::/64"
    assert host_key("2001:db8:1:2:3::4", 48) == "2001:db8:1::/48"
    assert host_key("::ffff:192.0.2.9") == "192.0.2.9"
    assert host_key("192.0.2.9") == "192.0.2.9"


def test_an_unblock_between_read_and_write_beats_the_extension(store_url: str) -> None:
    """The scorer reads a block, an operator ends it, then the scorer writes its extension:
    the unblock stands (compare-and-set on the expiry read), on both store backends."""
    from blocklist import blocks
    from relay.store import make_engine, upgrade

    engine = make_engine(store_url)
    upgrade(engine)
    now = datetime.now(UTC)
    blocks.add_manual(engine, "192.0.2.1", 600, "test", now=now - timedelta(seconds=5))
    read = blocks.load_blocks(engine)  # the scorer's read
    [ext] = decide(score_hosts([Offences("192.0.2.1", "unknown_rcpt", 3, now, now)], W), read,
                   threshold=10, duration=lambda level: 3600.0, recidive_window=0,
                   protected=NOBODY.why, weights=W, now=now)
    assert not ext.new and ext.expires > read["192.0.2.1"].expires
    assert blocks.remove(engine, "192.0.2.1", now=now)  # the operator, in between
    blocks.write_decisions(engine, [ext], "t", now)
    after = blocks.load_blocks(engine)["192.0.2.1"]
    assert after.level == 0 and after.expires <= now  # still ended
    # with nobody in between, the same extension lands
    blocks.add_manual(engine, "192.0.2.2", 600, "test", now=now - timedelta(seconds=5))
    read = blocks.load_blocks(engine)
    [ext] = decide(score_hosts([Offences("192.0.2.2", "unknown_rcpt", 3, now, now)], W), read,
                   threshold=10, duration=lambda level: 3600.0, recidive_window=0,
                   protected=NOBODY.why, weights=W, now=now)
    blocks.write_decisions(engine, [ext], "t", now)
    assert blocks.load_blocks(engine)["192.0.2.2"].expires == ext.expires
    engine.dispose()
