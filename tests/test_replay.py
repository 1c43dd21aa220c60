"""`floodgate replay` against the blocks a running relay's scorer really made: with the
configured scoring it finds exactly those; under a changed policy it says which would not
have been made."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from blocklist import blocks
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
