"""Scoring and block decisions as pure functions, with known answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from blocklist.hosts import host_key
from blocklist.protection import Protection
from blocklist.scoring import BlockState, Offences, cutoff, decide, score_hosts
from relay.config.blocklist import BlocklistConfig
from relay.config.scoring import DEFAULT_WEIGHTS

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
    from relay.store.database import make_engine, upgrade

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


def test_the_accepted_bonus_is_bounded() -> None:
    """100 accepted messages do not buy 100 more probes: the bonus stops at bonus_floor."""
    rows = [Offences("192.0.2.1", "accepted", 100, ago(600), ago(60)),
            Offences("192.0.2.1", "unknown_rcpt", 14, ago(50), ago(10))]
    assert score_hosts(rows, W, floor=-5)["192.0.2.1"].score == 14 - 5
    [d] = decide(score_hosts([*rows, Offences("192.0.2.1", "unknown_rcpt", 1, ago(5), ago(5))],
                             W, floor=-5), {}, threshold=10, duration=lambda level: 3600.0,
                 recidive_window=0, protected=NOBODY.why, weights=W, now=NOW)
    assert d.network == "192.0.2.1"


def test_too_many_recipients_is_no_offence() -> None:
    """A 452 4.5.3 asks the client to send the rest in another transaction (RFC 5321
    4.5.3.1.10): a bulk sender doing just that must not be scored for it."""
    assert W["too_many_rcpts"] == 0
    rows = [Offences("192.0.2.1", "too_many_rcpts", 30, ago(60), ago(10))]
    assert score_hosts(rows, W, floor=-5)["192.0.2.1"].score == 0


def _store(store_url: str):  # type: ignore[no-untyped-def]
    from relay.store.database import make_engine, upgrade

    engine = make_engine(store_url)
    upgrade(engine)
    return engine


def _events(engine, rows: list[tuple[str, str, datetime, str, str]]) -> None:  # type: ignore[no-untyped-def]
    """(client, reason, ts, sender, detail) as the relay records them."""
    from relay.events.record import EventRecord, as_row, write_rows

    with engine.begin() as conn:
        write_rows(conn, [as_row(EventRecord(
            ts=ts, node="t", client=client, host=host_key(client), stage="rcpt",
            action="reject", reason=reason, sender=sender, detail=detail))
            for client, reason, ts, sender, detail in rows])


def _scorer(engine, **scoring: object):  # type: ignore[no-untyped-def]
    from relay.config.scoring import ScoringConfig
    from relay.hosts.scorer import Scorer

    return Scorer(engine, ScoringConfig(threshold=10, window="1h", **scoring),  # type: ignore[arg-type]
                  BlocklistConfig(), NOBODY, "t")


def test_refusals_after_an_unblock_are_no_offences(store_url: str) -> None:
    """An operator ends a block; relays refuse the host from their old snapshot for up to
    refresh_interval: those refusals must not block it again."""
    from blocklist import blocks

    engine = _store(store_url)
    now = datetime.now(UTC)
    blocks.add_manual(engine, "192.0.2.4", 3600, "test", now=now - timedelta(seconds=60))
    _events(engine, [("192.0.2.4", "blocked", now - timedelta(seconds=50 - i), "", "192.0.2.4")
                     for i in range(5)])  # while blocked: these may extend it
    assert blocks.remove(engine, "192.0.2.4", now=now - timedelta(seconds=30))
    _events(engine, [("192.0.2.4", "blocked", now - timedelta(seconds=30 - i), "", "192.0.2.4")
                     for i in range(25)])  # after the unblock, from a stale snapshot
    assert _scorer(engine).run_once(now) == []
    assert blocks.load_blocks(engine)["192.0.2.4"].expires <= now
    # real offences after the unblock still count
    _events(engine, [("192.0.2.4", "unknown_rcpt", now - timedelta(seconds=2), "", "")] * 10)
    [d] = _scorer(engine).run_once(now)
    assert d.network == "192.0.2.4" and d.reason == "unknown_rcpt=10"
    engine.dispose()


def test_an_unblock_after_the_scorer_took_its_time_is_not_undone(store_url: str,
                                                                   monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The periodic run takes the time, then reads; an operator's unblock committed in
    between left a block that looked active at that time, and its extension (the
    host's refusals since the block began) revived it for another block_time. Seen once in
    a full suite run (tests/test_web_api.py). The race is made here by ending the block
    inside the scorer's first read."""
    from blocklist import blocks

    engine = _store(store_url)
    now = datetime.now(UTC)
    blocks.add_manual(engine, "192.0.2.5", 3600, "test", now=now - timedelta(seconds=60))
    _events(engine, [("192.0.2.5", "blocked", now - timedelta(seconds=20), "", "192.0.2.5")])
    read = blocks.load_offences
    unblocked: list[bool] = []

    def unblock_first(*args, **kw):  # type: ignore[no-untyped-def]
        if not unblocked:
            unblocked.append(blocks.remove(engine, "192.0.2.5"))
        return read(*args, **kw)

    monkeypatch.setattr(blocks, "load_offences", unblock_first)
    assert _scorer(engine).run_once() == []
    assert unblocked == [True]
    assert "192.0.2.5" not in {b.network for b in blocks.active_blocks(engine)}
    engine.dispose()


def test_null_sender_mail_earns_no_bonus(store_url: str) -> None:
    engine = _store(store_url)
    now = datetime.now(UTC)
    at = now - timedelta(seconds=10)
    _events(engine, [("192.0.2.5", "accepted", at, "", "")] * 5
            + [("192.0.2.5", "unknown_rcpt", at, "", "")] * 10
            + [("192.0.2.6", "accepted", at, "news@example.com", "")] * 5
            + [("192.0.2.6", "unknown_rcpt", at, "", "")] * 10)
    assert [d.network for d in _scorer(engine).run_once(now)] == ["192.0.2.5"]
    engine.dispose()


def test_hosts_of_one_network_add_up(store_url: str) -> None:
    """Four hosts of a /24 each stay under the host threshold; together they pass the
    network threshold and the /24 is blocked, not the hosts."""
    from blocklist import blocks

    engine = _store(store_url)
    now = datetime.now(UTC)
    at = now - timedelta(seconds=10)
    _events(engine, [(f"198.51.100.{h}", "unknown_rcpt", at, "", "")
                     for h in (10, 11, 12, 13) for _ in range(8)]
            + [("203.0.113.1", "unknown_rcpt", at, "", "")] * 8)
    scorer = _scorer(engine, network_threshold=30)
    [d] = scorer.run_once(now)
    assert (d.network, d.score, d.reason) == ("198.51.100.0/24", 32, "unknown_rcpt=32")
    assert set(blocks.load_blocks(engine)) == {"198.51.100.0/24"}
    # paid for: the same offences do not block it again once it has ended
    assert blocks.remove(engine, "198.51.100.0/24", now=now)
    assert _scorer(engine, network_threshold=30).run_once(now + timedelta(seconds=1)) == []
    engine.dispose()


def test_listening_on_localhost_protects_both_loopback_addresses() -> None:
    """The scorer and the gate took `localhost` as a literal address, so only the export
    protected 127.0.0.1 and ::1 of a relay listening on `localhost`."""
    protection = Protection.build([], ["localhost", "*", "::"], loopback=False)
    assert protection.why("127.0.0.1") == "one of the relay's own listen addresses"
    assert protection.why("::1") == "one of the relay's own listen addresses"
    assert protection.why("127.0.0.2") is None
    assert protection.networks() == ["127.0.0.1", "::1"]
