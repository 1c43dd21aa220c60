"""The HTTP API and feeds over real HTTP: `floodgate web` and `floodgate serve` as separate
processes on one SQLite store, so a change made through the API must reach the relay's
connect gate through the store, as it would in production."""

from __future__ import annotations

import hashlib
import smtplib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from blocklist import blocks
from relay.config.scoring import DEFAULT_WEIGHTS
from relay.config.web import WebConfig
from relay.store.database import make_engine
from relay.store.web_tables import ApiToken, AuditEntry
from tests.support import floodgate, free_port, wait_until, write_config
from tests.test_blocking import dictionary_attack, refused_at_connect
from tests.test_smtp import ALIASES
from tests.web_support import (
    ADMIN,
    ADMIN_NAME,
    READ,
    gate_caught_up,
    relay_extra,
    web_starter,
)


@pytest.fixture
def start_web():  # type: ignore[no-untyped-def]
    yield from web_starter()


@pytest.fixture
def stack(start_relay, start_web, sqlite_url):  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES, extra=relay_extra())
    return relay, start_web(relay.config)


def audit_rows(url: str) -> list[tuple[str, str, str]]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(AuditEntry.who, AuditEntry.action, AuditEntry.target)
                            .order_by(AuditEntry.id)).all()
    engine.dispose()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_no_token_no_entry_and_read_tokens_change_nothing(stack, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    _, web = stack
    with web.client() as anon, web.client("not-a-real-token-at-all") as wrong, \
            web.client(READ) as reader:
        for path in ("/api/blocks", "/api/reports/summary", "/api/queue", "/api/hosts/1.2.3.4",
                     "/blocklist.txt", "/blocklist.json"):
            for client in (anon, wrong):
                r = client.get(path)
                assert r.status_code == 401, path
                assert r.headers["www-authenticate"].startswith("Bearer")
        assert anon.post("/api/blocks", json={"network": "192.0.2.1"}).status_code == 401
        assert reader.get("/api/whoami").json()["scope"] == "read"
        assert reader.get("/api/blocks").json() == []
        changes = [reader.post("/api/blocks", json={"network": "192.0.2.1"}),
                   reader.delete("/api/blocks/192.0.2.1"),
                   reader.post("/api/allow", json={"network": "192.0.2.2"}),
                   reader.delete("/api/allow/192.0.2.2")]
        assert [r.status_code for r in changes] == [403] * 4
        assert "may read but not change" in changes[0].json()["detail"]
        assert reader.get("/api/blocks").json() == []
        assert reader.get("/api/allow").json() == [
            {"network": "127.0.0.9", "reason": "", "source": "config", "created_at": None}]
    assert audit_rows(sqlite_url) == []


def test_block_and_unblock_reach_a_running_relays_gate(stack, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay, web = stack
    assert refused_at_connect(relay, "127.0.0.4") is None
    with web.client(ADMIN) as admin, web.client(READ) as reader:
        r = admin.post("/api/blocks", json={"network": "127.0.0.4", "duration": "2h",
                                            "reason": "abuse report"})
        assert r.status_code == 201, r.text
        assert r.json()["network"] == "127.0.0.4"
        assert 7100 < r.json()["seconds_left"] <= 7200
        gate_caught_up(relay, sqlite_url)
        assert "[127.0.0.4] is blocked until" in str(refused_at_connect(relay, "127.0.0.4"))
        [listed] = reader.get("/api/blocks").json()
        assert (listed["network"], listed["reason"], listed["source"]) == \
            ("127.0.0.4", "abuse report", "manual")
        host = reader.get("/api/hosts/127.0.0.4").json()
        assert host["state"] == "blocked" and "abuse report" in host["why"]
        # never-block rules hold for the API as for the CLI
        r = admin.post("/api/blocks", json={"network": "127.0.0.9"})
        assert r.status_code == 409 and "allowlisted" in r.json()["detail"]
        r = admin.post("/api/blocks", json={"network": "127.0.0.1"})
        assert r.status_code == 409  # the relay's own address
        assert admin.post("/api/blocks", json={"network": "not-an-ip"}).status_code == 422
        assert admin.post("/api/blocks", json={"network": "192.0.2.3",
                                               "duration": "soon"}).status_code == 422
        r = admin.delete("/api/blocks/127.0.0.4")
        assert r.status_code == 200 and r.json()["ok"]
        gate_caught_up(relay, sqlite_url)
        assert refused_at_connect(relay, "127.0.0.4") is None
        assert admin.delete("/api/blocks/127.0.0.4").status_code == 404
        assert reader.get("/api/hosts/127.0.0.4").json()["state"] == "expired"
        # a network block, and the allowlist winning over it
        assert admin.post("/api/blocks", json={"network": "127.0.0.0/29"}).status_code == 201
        gate_caught_up(relay, sqlite_url)
        assert refused_at_connect(relay, "127.0.0.3")
        r = admin.post("/api/allow", json={"network": "127.0.0.3", "reason": "partner"})
        assert r.status_code == 201
        gate_caught_up(relay, sqlite_url)
        assert refused_at_connect(relay, "127.0.0.3") is None
        assert admin.delete("/api/allow/127.0.0.3").status_code == 200
        assert admin.delete("/api/allow/127.0.0.3").status_code == 404
        assert admin.delete("/api/blocks/127.0.0.0%2F29").status_code == 200
        trail = reader.get("/api/audit").json()
    assert [(a["action"], a["target"]) for a in reversed(trail)] == [
        ("block", "127.0.0.4"), ("unblock", "127.0.0.4"), ("block", "127.0.0.0/29"),
        ("allow", "127.0.0.3"), ("unallow", "127.0.0.3"), ("unblock", "127.0.0.0/29")]
    assert {a["who"] for a in trail} == {ADMIN_NAME}
    assert all(a["ts"] for a in trail)
    assert audit_rows(sqlite_url)[0] == (ADMIN_NAME, "block", "127.0.0.4")


def test_scored_host_unblocked_stays_unblocked(stack, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """Unblocking ends the block rather than deleting it: the offences behind an automatic
    block stay paid for, so the next scoring run does not block the host again."""
    relay, web = stack
    unknown = dictionary_attack(relay, "127.0.0.5").count(550)  # then 554: blocked
    wait_until(lambda: refused_at_connect(relay, "127.0.0.5"), what="scored block")
    with web.client(ADMIN) as admin:
        def written() -> dict | None:  # type: ignore[type-arg]
            """The block is made as the offence is recorded, before its events are
            written to the store (in batches)."""
            host = admin.get("/api/hosts/127.0.0.5").json()
            counts = {r["reason"]: r["count"] for r in host["reasons"]}
            return host if counts.get("unknown_rcpt") == unknown else None

        host = wait_until(written, what="the attack's events written")
        assert host["state"] == "blocked" and host["score"] >= 10 and unknown >= 10
        by_reason = {r["reason"]: r for r in host["reasons"]}
        assert by_reason["unknown_rcpt"]["points"] == unknown
        assert admin.delete("/api/blocks/127.0.0.5").status_code == 200
    gate_caught_up(relay, sqlite_url)
    assert refused_at_connect(relay, "127.0.0.5") is None
    # what the scorer reads: nothing left to count against the host
    engine = make_engine(sqlite_url)
    now = datetime.now(UTC)
    left = blocks.load_offences(engine, since=now - timedelta(hours=1), now=now,
                                reasons=list(DEFAULT_WEIGHTS))
    engine.dispose()
    assert [o for o in left if o.host == "127.0.0.5"] == []
    for _ in range(5):
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10,
                          source_address=("127.0.0.5", 0)) as smtp:
            assert smtp.noop()[0] == 250


def test_feeds_answer_304_until_the_blocks_change(stack) -> None:  # type: ignore[no-untyped-def]
    _, web = stack
    with web.client(READ) as reader, web.client(ADMIN) as admin:
        first = reader.get("/blocklist.txt")
        assert first.status_code == 200 and first.text == ""
        tag, modified = first.headers["etag"], first.headers["last-modified"]
        again = reader.get("/blocklist.txt", headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == tag
        assert reader.get("/blocklist.txt",
                          headers={"If-Modified-Since": modified}).status_code == 304
        assert admin.post("/api/blocks", json={"network": "198.51.100.0/24",
                                               "reason": "feed test"}).status_code == 201
        changed = reader.get("/blocklist.txt", headers={"If-None-Match": tag})
        assert changed.status_code == 200
        assert changed.text == "198.51.100.0/24\n"
        assert changed.headers["etag"] != tag
        assert reader.get("/blocklist.txt", headers={
            "If-None-Match": changed.headers["etag"]}).status_code == 304
        js = reader.get("/blocklist.json")
        assert js.headers["content-type"] == "application/json"
        assert [(e["network"], e["reason"]) for e in js.json()] == \
            [("198.51.100.0/24", "feed test")]
        nft = reader.get("/blocklist.nft")
        assert "198.51.100.0/24 timeout" in nft.text
        assert reader.get("/blocklist.nft", headers={
            "If-None-Match": nft.headers["etag"]}).status_code == 304
        # an allowlisted network never reaches a firewall (split around it)
        admin.post("/api/allow", json={"network": "198.51.100.0/25"})
        assert reader.get("/blocklist.txt").text == "198.51.100.128/25\n"


def test_public_feeds_need_no_token(start_relay, start_web, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, extra=relay_extra(public_feeds=True))
    web = start_web(relay.config)
    with web.client() as anon:
        assert anon.get("/blocklist.txt").status_code == 200
        assert anon.get("/api/blocks").status_code == 401  # the API still needs one


def test_tokens_made_by_the_cli_are_stored_hashed(stack, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay, web = stack
    made = floodgate(relay.config, "token", "create", "ops-alice", "--scope", "admin")
    secret = made.stdout.strip()
    assert len(secret) > 30 and "shown only now" in made.stderr
    assert "ops-alice\tadmin" in floodgate(relay.config, "token", "list").stdout
    assert secret not in floodgate(relay.config, "token", "list").stdout
    assert floodgate(relay.config, "token", "create", "ops-alice", check=False).returncode == 1
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        stored = conn.execute(select(ApiToken.token_hash)).scalar_one()
    engine.dispose()
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
    with web.client(secret) as alice:
        assert alice.get("/api/whoami").json() == {
            "name": "ops-alice", "scope": "admin", "node": "relay", "refresh_seconds": 1.0,
            "public_feeds": False}
        assert alice.post("/api/blocks", json={"network": "192.0.2.9"}).status_code == 201
        floodgate(relay.config, "token", "revoke", "ops-alice")
        assert alice.get("/api/whoami").status_code == 401
    assert audit_rows(sqlite_url) == [("ops-alice", "block", "192.0.2.9")]


def test_report_endpoints_give_the_cli_numbers(stack) -> None:  # type: ignore[no-untyped-def]
    import json

    relay, web = stack
    dictionary_attack(relay, "127.0.0.6", tries=4)

    def cli_report() -> list[dict[str, object]]:
        out = floodgate(relay.config, "report", "hosts", "--format", "json").stdout
        rows = json.loads(out)
        return rows if rows and rows[0]["unknown_rcpt"] == 4 else []

    cli = wait_until(cli_report, what="events written")
    with web.client(READ) as reader:
        assert reader.get("/api/reports/hosts").json() == cli
        summary = reader.get("/api/reports/summary").json()
        assert summary["outcomes"]["unknown_rcpt"] == 4
        timeline = reader.get("/api/reports/timeline?since=1h&bucket=5m").json()
        assert sum(b["unknown_rcpt"] for b in timeline["buckets"]) == 4
        queue = reader.get("/api/queue").json()
        assert queue["queued"] == 0 and queue["messages"] == []
        assert reader.get("/api/reports/timeline?since=30d&bucket=1m").status_code == 422
        # the reason filter takes every event reason (relay/reasons.py), and only those
        assert reader.get("/api/reports/hosts?reason=rate_limit").json() == []
        assert reader.get("/api/reports/hosts?reason=rate_limt").status_code == 422


def test_the_issue_example_config_is_valid_and_mistakes_are_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = WebConfig.model_validate({"listen": "127.0.0.1:8025", "public_feeds": False,
                                    "tokens": {ADMIN: "admin", READ: "read"}})
    assert cfg.endpoint() == ("127.0.0.1", 8025)
    assert WebConfig().listen == "127.0.0.1:8025" and not WebConfig().public_feeds
    path = write_config(tmp_path / "c.toml", store_url="sqlite:///x.db", port=free_port(),
                        extra='[web]\nlisten = "everywhere:80"\nlistne = 1\n'
                              '[web.tokens]\n"long-enough-token" = "root"\n'
                              '"another-long-token" = { scope = "admin", name = "alice" }\n')
    bad = floodgate(path, "check-config", check=False)
    assert bad.returncode == 2
    assert bad.stderr.count(str(path)) == 3, bad.stderr
    for key in ("web.listen: 'everywhere:80': listen on an IP address",
                "web.listne: unknown key",
                "web.tokens.long-enough-token.scope: Input should be 'read' or 'admin'"):
        assert key in bad.stderr, bad.stderr
    text = path.read_text()
    path.write_text(text[:text.index("[web]")] + '[web]\ntokens = { "short" = "admin" }\n')
    bad = floodgate(path, "check-config", check=False)
    assert "web.tokens: a token must be at least 16 characters" in bad.stderr
