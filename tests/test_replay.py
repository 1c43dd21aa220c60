"""`floodgate replay` against the blocks a running relay's scorer really made: with the
configured scoring it finds exactly those; under a changed policy it says which would not
have been made."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from blocklist import blocks
from blocklist.protection import Protection
from blocklist.replay import Actual, EventRow, Policy, Replay, compare
from relay.config.blocklist import BlocklistConfig
from relay.config.scoring import DEFAULT_WEIGHTS
from relay.store.database import make_engine
from relay.store.tables import Event
from tests.support import floodgate, wait_until
from tests.test_blocking import SCORING, dictionary_attack, refused_at_connect
from tests.test_smtp import ALIASES

ATTACKERS = ["127.0.0.5", "127.0.0.6"]


@pytest.fixture
def attacked(start_relay, sqlite_url):  # type: ignore[no-untyped-def]
    """A relay whose scorer blocked two dictionary attackers; an allowlisted third scored
    over the threshold and was not blocked. Returns the relay and its blocks table."""
    relay = start_relay(sqlite_url, aliases=ALIASES, extra=SCORING % "1h")
    engine = make_engine(sqlite_url)
    refused = {}
    for source in ["127.0.0.9", *ATTACKERS]:
        codes = dictionary_attack(relay, source)
        refused[source] = codes.count(550)
        if source in ATTACKERS:
            wait_until(lambda s=source: refused_at_connect(relay, s), what=f"block {source}")

    def recorded() -> bool:
        """Every 550 the attackers were given is in the store (the writer batches)."""
        with engine.connect() as conn:
            rows = dict(conn.execute(select(Event.host, func.sum(Event.count))
                                     .where(Event.reason == "unknown_rcpt")
                                     .group_by(Event.host)).all())
        return all(rows.get(s, 0) == n for s, n in refused.items())

    wait_until(recorded, what="events in the store")
    table = blocks.load_blocks(engine)
    assert set(table) == set(ATTACKERS)
    yield relay, table
    engine.dispose()


def replay(relay, *args: str) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(floodgate(relay.config, "replay", "--since", "1h", "--format", "json",
                                *args).stdout)


def test_replay_of_the_configured_scoring_finds_the_scorers_blocks(attacked) -> None:  # type: ignore[no-untyped-def]
    relay, table = attacked
    result = replay(relay)
    assert result["changes"] == {}
    found = {b["network"]: b for b in result["would_block"]}
    assert set(found) == set(table)  # not the allowlisted 127.0.0.9
    for network, block in found.items():
        assert block["blocked_now"] is True
        assert block["kind"] == "host"
        assert block["level"] == table[network].level == 1
        # the block starts at the tenth offence; the row's score grows as the host knocks
        assert block["score"] == 10 and block["offences"] == 10
        assert block["reason"] == table[network].reason == "unknown_rcpt=10"
        assert block["first_offence"] == table[network].first_seen.isoformat()
    assert result["would_not_block"] == []
    shown = floodgate(relay.config, "replay", "--since", "1h").stdout
    assert "the configured scoring (no changes)" in shown
    assert "would be blocked: 2 (0 not blocked now)" in shown
    assert "would not have been blocked: 0" in shown


def test_replay_shows_a_block_the_operator_lifted_as_unblocked(attacked) -> None:  # type: ignore[no-untyped-def]
    relay, _ = attacked
    floodgate(relay.config, "block", "remove", ATTACKERS[0])
    wait_until(lambda: refused_at_connect(relay, ATTACKERS[0]) is None, what="unblocked")
    found = {b["network"]: b for b in replay(relay)["would_block"]}
    lifted = found[ATTACKERS[0]]["unblocked"]
    assert lifted is not None and lifted["by"]
    assert found[ATTACKERS[0]]["until"] == lifted["at"]  # ended there, as the real one
    assert found[ATTACKERS[1]]["unblocked"] is None
    shown = floodgate(relay.config, "replay", "--since", "1h").stdout
    assert f"unblocked by {lifted['by']} at" in shown


def test_replay_under_a_higher_threshold_or_no_weight_blocks_nobody(attacked) -> None:  # type: ignore[no-untyped-def]
    relay, table = attacked
    higher = replay(relay, "--threshold", "25")
    assert higher["changes"] == {"threshold": {"configured": 10, "replayed": 25}}
    assert higher["would_block"] == []
    assert {a["network"] for a in higher["would_not_block"]} == set(table)
    shown = floodgate(relay.config, "replay", "--since", "1h", "--threshold", "25").stdout
    assert "threshold 10 -> 25" in shown
    assert "would not have been blocked: 2" in shown
    assert all(network in shown for network in table)
    unweighted = replay(relay, "--weight", "unknown_rcpt=0")
    assert unweighted["would_block"] == []
    assert {a["network"] for a in unweighted["would_not_block"]} == set(table)


def test_replay_refuses_a_misspelt_weight(attacked) -> None:  # type: ignore[no-untyped-def]
    relay, _ = attacked
    proc = floodgate(relay.config, "replay", "--weight", "unknwn_rcpt=2", check=False)
    assert proc.returncode == 2
    assert "'unknwn_rcpt'" in proc.stderr
    assert "did you mean 'unknown_rcpt'?" in proc.stderr


# -- the replay's rules, with known answers over rows ----------------------------------

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CFG = BlocklistConfig(block_time=3600, escalation=2, recidive_window=86_400)


def policy(protection: Protection | None = None, network_threshold: float = 30) -> Policy:
    return Policy(weights=dict(DEFAULT_WEIGHTS), threshold=10,
                  network_threshold=network_threshold, window=3600, duration=CFG.duration,
                  recidive_window=CFG.recidive_window,
                  protected=(protection or Protection.build([], [], loopback=False)).why,
                  floor=-5)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def guesses(host: str, n: int, start: float = 0) -> list[EventRow]:
    return [EventRow(at(start + i), host, "unknown_rcpt") for i in range(n)]


def test_a_block_starts_at_the_crossing_offence_and_knocking_extends_it() -> None:
    events = [*guesses("192.0.2.7", 12),
              EventRow(at(600), "192.0.2.7", "blocked", detail="192.0.2.7")]
    [block] = Replay(policy()).run(events)
    assert (block.network, block.start, block.score, block.offences) == ("192.0.2.7", at(9),
                                                                        10, 10)
    assert block.expires == at(600 + 3600)


def test_refusals_by_a_block_the_policy_never_made_are_no_offences() -> None:
    events = [EventRow(at(i), "192.0.2.7", "blocked", detail="192.0.2.7") for i in range(30)]
    assert Replay(policy()).run(events) == []


def test_a_host_back_within_the_recidive_window_is_blocked_for_longer() -> None:
    made = Replay(policy()).run([*guesses("192.0.2.7", 10), *guesses("192.0.2.7", 10, 7200)])
    assert [(b.level, b.expires - b.start) for b in made] == [
        (1, timedelta(hours=1)), (2, timedelta(hours=2))]


def test_a_network_is_blocked_when_its_hosts_together_reach_its_threshold() -> None:
    events = [e for i in range(8) for e in guesses(f"192.0.2.{i + 1}", 9, i * 10)]
    protected = Protection.build(["192.0.2.1"], [], loopback=False)
    assert Replay(policy(protected)).run(events) == []  # an allowlisted host in it
    [block] = Replay(policy()).run(events)
    assert (block.network, block.kind, block.score) == ("192.0.2.0/24", "network", 30)
    assert block.start == at(32) and block.reason == "unknown_rcpt=30"
    assert Replay(policy(network_threshold=0)).run(events) == []


def test_only_blocks_made_since_the_start_are_compared() -> None:
    made = Replay(policy()).run([*guesses("192.0.2.7", 10), *guesses("192.0.2.8", 10, 100)])
    actual = [Actual("192.0.2.8", at(109), 10, 1, ""), Actual("192.0.2.9", at(50), 10, 1, ""),
              Actual("192.0.2.6", at(0), 10, 1, "")]
    result = compare(made, actual, at(20))
    assert [(b.network, real) for b, real in result.blocked] == [("192.0.2.8", True)]
    assert [a.network for a in result.not_blocked] == ["192.0.2.9"]
