"""Host operations have one owner (blocklist/operations.py): a change made with the CLI is
audited as one made through the API is, both refuse what the never-block rules refuse, and
`hosts show` says the same thing from both, counting offences as the scorer counts them.
`floodgate web` and the CLI run as subprocesses on one SQLite store."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from blocklist import blocks
from relay.store.database import make_engine
from relay.store.tables import Event
from tests.support import floodgate, free_port, write_config
from tests.web_support import ADMIN, READ, relay_extra, web_starter


@pytest.fixture
def start_web():  # type: ignore[no-untyped-def]
    yield from web_starter()


@pytest.fixture
def setup(tmp_path: Path, start_web):  # type: ignore[no-untyped-def]
    """A configuration (relay on a port nobody listens on: none is needed), its store, and
    `floodgate web` over it."""
    url = f"sqlite:///{tmp_path}/floodgate.db"
    config = write_config(tmp_path / "ops.toml", store_url=url, port=free_port(),
                          extra=relay_extra() + '[firewall]\nnever_block = ["203.0.113.0/28"]\n')
    floodgate(config, "db", "upgrade")
    return config, url, start_web(config)


def test_cli_changes_are_in_the_audit_trail(setup) -> None:  # type: ignore[no-untyped-def]
    config, _, web = setup
    floodgate(config, "block", "add", "192.0.2.7", "--reason", "abuse report")
    floodgate(config, "allow", "add", "198.51.100.9", "--reason", "partner")
    floodgate(config, "allow", "remove", "198.51.100.9")
    floodgate(config, "block", "remove", "192.0.2.7")
    with web.client(READ) as reader:
        trail = reader.get("/api/audit").json()
    assert [(a["who"], a["action"], a["target"]) for a in reversed(trail)] == [
        (f"cli:{getpass.getuser()}", action, target) for action, target in [
            ("block", "192.0.2.7"), ("allow", "198.51.100.9"), ("unallow", "198.51.100.9"),
            ("unblock", "192.0.2.7")]]
    assert "abuse report" in trail[-1]["detail"]


def test_hosts_show_sees_a_block_on_the_covering_network(setup) -> None:  # type: ignore[no-untyped-def]
    config, _, web = setup
    floodgate(config, "block", "add", "192.0.2.0/24", "--reason", "snowshoe")
    shown = floodgate(config, "hosts", "show", "192.0.2.77").stdout
    assert "BLOCKED: inside 192.0.2.0/24 until" in shown and "snowshoe" in shown
    with web.client(READ) as reader:
        host = reader.get("/api/hosts/192.0.2.77").json()
    assert host["state"] == "blocked" and "inside 192.0.2.0/24" in host["why"]


def test_never_block_rules_are_one_set(setup) -> None:  # type: ignore[no-untyped-def]
    """`firewall.never_block` kept a network out of the export only: the CLI, the API (and
    the scorer) blocked it, so the relay refused a host the kernel let through."""
    config, url, web = setup
    refused = floodgate(config, "block", "add", "203.0.113.5", check=False)
    assert refused.returncode == 1
    assert "203.0.113.5 is never blocked: firewall.never_block (203.0.113.0/28)" \
        in refused.stderr
    with web.client(ADMIN) as admin:
        r = admin.post("/api/blocks", json={"network": "203.0.113.0/30"})
        assert r.status_code == 409 and "firewall.never_block" in r.json()["detail"]
        assert admin.get("/api/hosts/203.0.113.5").json()["state"] == "never"
    # a block of every address is refused from the shell as from the API
    everyone = floodgate(config, "block", "add", "0.0.0.0/0", check=False)
    assert everyone.returncode == 2 and "a block of every address" in everyone.stderr
    engine = make_engine(url)
    assert blocks.active_blocks(engine) == []
    engine.dispose()


def test_hosts_show_counts_as_the_scorer_counts(setup) -> None:  # type: ignore[no-untyped-def]
    """Mail from the null sender earns no bonus, and a refusal by a block that had ended is
    no offence (blocks.load_offences); the bonus stops at bonus_floor. Both front ends."""
    config, url, web = setup
    host, now = "192.0.2.50", datetime.now(UTC)
    engine = make_engine(url)
    ended = blocks.add_manual(engine, host, 60, "old", now=now - timedelta(minutes=30))
    row = dict(node="t", client=host, host=host, stage="rcpt", action="reject", code=550,
               detail="", sender="x@example.net")  # executemany: every row, every key
    with engine.begin() as conn:
        conn.execute(insert(Event), [
            {**row, "ts": now - timedelta(minutes=5), "reason": "unknown_rcpt", "count": 4},
            {**row, "ts": now - timedelta(minutes=5), "reason": "blocked", "count": 50,
             "stage": "connect", "code": 554, "detail": ended.network},
            {**row, "ts": now - timedelta(minutes=5), "reason": "accepted", "count": 30,
             "action": "accept", "code": 250, "sender": ""},
            {**row, "ts": now - timedelta(minutes=5), "reason": "accepted", "count": 10,
             "action": "accept", "code": 250, "sender": "a@example.net"}])
    engine.dispose()
    # unknown_rcpt 4 x 1, accepted 10 x -1 floored at -5: -1
    shown = floodgate(config, "hosts", "show", host).stdout
    assert "score over the last 1h: -1 " in shown
    assert "blocked " not in shown.split("time (UTC)")[0]  # no `blocked` offence row
    with web.client(READ) as reader:
        view = reader.get(f"/api/hosts/{host}").json()
    assert view["score"] == -1
    assert {r["reason"]: r["count"] for r in view["reasons"]} == \
        {"unknown_rcpt": 4, "accepted": 10}
