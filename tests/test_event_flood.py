"""A flood must not blind the scorer: the event writer folds what it cannot keep one row
per event into one row per host, reason and minute (relay/events/writer.py), and every query
counts the events those rows stand for. Real writer children, real stores."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from blocklist import blocks
from blocklist.protection import Protection
from blocklist.reports import window_counts
from blocklist.scoring import score_hosts
from relay.config.blocklist import BlocklistConfig
from relay.config.scoring import ScoringConfig
from relay.events.record import EventRecord
from relay.events.writer import EventWriter
from relay.hosts.scorer import Scorer
from relay.store.database import make_engine, upgrade
from relay.store.rollups import HOUR, HostRollup, TimelineRollup, floor
from relay.store.tables import SUMMARY_HOST, Event, events_counted
from tests.support import event_count, wait_until
from tests.test_blocking import SCORING, dictionary_attack, refused_at_connect
from tests.test_smtp import ALIASES

EVENTS = 300_000
HOSTS = 2_000
ROUNDS = EVENTS // HOSTS  # 150 events a host: 15 connections, 15 messages, 120 probes
PROBES = ROUNDS * 8 // 10


def host(h: int) -> str:
    return f"198.18.{h // 200}.{h % 200 + 1}"


def flood_event(i: int, base: datetime) -> EventRecord:
    """The i-th event of the flood: hosts in turn, each connecting, sending a message and
    probing for recipients, all within one minute (100 us apart)."""
    addr = host(i % HOSTS)
    kind = (i // HOSTS) % 10
    ts = base + timedelta(microseconds=100 * i)
    if kind == 0:
        return EventRecord(ts=ts, node="t", client=addr, host=addr, stage="connect",
                           action="accept", reason="connect", code=220)
    if kind == 1:
        return EventRecord(ts=ts, node="t", client=addr, host=addr, stage="data",
                           action="accept", reason="accepted", code=250,
                           recipient="alice@example.org")
    return EventRecord(ts=ts, node="t", client=addr, host=addr, stage="rcpt", action="reject",
                       reason="unknown_rcpt", code=550, recipient=f"guess{i}@example.org")


def test_flood_from_2000_hosts_keeps_every_offence(store_url: str) -> None:
    """300,000 events from 2,000 hosts through a writer with room for 10,000 rows: none
    dropped, the store counts all of them, and the scorer blocks every host for its full
    count of probes."""
    engine = make_engine(store_url)
    upgrade(engine)
    now = datetime.now(UTC)
    base = floor(now, HOUR) - timedelta(minutes=30)  # xx:30:00 of the previous hour

    async def go() -> EventWriter:
        writer = EventWriter(engine, batch=1_000, interval=0.05, capacity=10_000)
        await writer.process.write([])  # the child is up before the flood
        task = asyncio.create_task(writer.run())
        for start in range(0, EVENTS, 5_000):
            for i in range(start, start + 5_000):
                writer.emit(flood_event(i, base))
            await asyncio.sleep(0)  # the writer takes a batch between bursts
        async with asyncio.timeout(240):
            while writer.written < EVENTS:
                await asyncio.sleep(0.05)
        await writer.close(task)
        return writer

    writer = asyncio.run(go())
    assert writer.dropped == 0
    assert writer.aggregated > 0  # the flood was folded: this is the path under test
    assert writer.written == EVENTS
    assert event_count(engine) == EVENTS  # sum(count) == events emitted
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(Event)).scalar_one()
        rolled = {m.__tablename__: conn.execute(select(func.sum(m.total))).scalar_one()
                  for m in (HostRollup, TimelineRollup)}
    assert rows == EVENTS - writer.aggregated  # a row for each event not folded into another
    assert rolled == {"host_rollups": EVENTS, "timeline_rollups": EVENTS}

    # the scorer's own query: every host, with every probe it made
    offences = blocks.load_offences(engine, since=base - HOUR, now=now,
                                    reasons=["unknown_rcpt"])
    assert {(o.host, o.count) for o in offences} == {(host(h), PROBES) for h in range(HOSTS)}
    scores = score_hosts(offences, ScoringConfig().all_weights())
    assert sum(s.score >= 10 for s in scores.values()) == HOSTS
    scorer = Scorer(engine, ScoringConfig(window=86_400), BlocklistConfig(),
                    Protection.build([], [], loopback=True), node="t")
    decided = scorer.run_once(now)
    assert sorted(d.network for d in decided) == sorted(host(h) for h in range(HOSTS))
    assert all(f"unknown_rcpt={PROBES}" in d.reason for d in decided)

    # reports: counted from raw events (the part of the window before the first whole
    # hour) and from the rollups, the same per host and reason
    with engine.connect() as conn:
        raw = window_counts(conn, HostRollup, HOUR, ("host", "reason"), base)
        whole = window_counts(conn, HostRollup, HOUR, ("host", "reason"), base - HOUR / 2)
    assert Counter({(h, r): int(n) for h, r, n in raw}) == \
        Counter({(h, r): int(n) for h, r, n in whole})
    per_reason: Counter[str] = Counter()
    for h, r, n in raw:
        per_reason[r] += int(n)
        assert not (h == SUMMARY_HOST and r == "unknown_rcpt")  # offences stay per host
    assert per_reason == {"connect": EVENTS // 10, "accepted": EVENTS // 10,
                          "unknown_rcpt": EVENTS * 8 // 10}
    engine.dispose()


def _record(addr: str, action: str, reason: str, ts: datetime) -> EventRecord:
    return EventRecord(ts=ts, node="t", client=addr, host=addr, stage="rcpt", action=action,
                       reason=reason)


def test_accepted_events_are_summarised_before_an_offence_is_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    """Room for 2 single events and 2 folded rows. Once both halves are full, each new
    offending host takes the room of a host's accepted events (summarised as host `*`);
    only when no accepted events are left to summarise is an offence dropped, counted and
    logged. A `pregreet` is accepted but scores: it is kept like an offence."""
    ts = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
    writer = EventWriter(make_engine("sqlite://"), capacity=4)
    for _ in range(2):  # the buffer's half for single events
        writer.emit(_record("192.0.2.1", "accept", "known_rcpt", ts))
    writer.emit(_record("192.0.2.2", "accept", "known_rcpt", ts))
    writer.emit(_record("192.0.2.3", "accept", "known_rcpt", ts))
    assert len(writer.folded) == 2 and not writer.summary
    writer.emit(_record("192.0.2.4", "reject", "unknown_rcpt", ts))  # takes .2's room
    writer.emit(_record("192.0.2.5", "accept", "pregreet", ts))  # takes .3's room
    writer.emit(_record("192.0.2.6", "accept", "known_rcpt", ts))  # straight to `*`
    assert {k[1] for k in writer.folded} == {"192.0.2.4", "192.0.2.5"}
    [summary] = writer.summary.values()
    assert (summary.host, summary.client, summary.count) == (SUMMARY_HOST, SUMMARY_HOST, 3)
    assert writer.dropped == 0
    with caplog.at_level(logging.ERROR, logger="floodgate.events"):
        writer.emit(_record("192.0.2.7", "reject", "unknown_rcpt", ts))  # no room left
        writer.emit(_record("192.0.2.4", "reject", "unknown_rcpt", ts))  # its row: counted
    assert writer.dropped == 1
    assert "event buffer full capacity=4 dropped_total=1" in caplog.text
    assert writer.folded[(ts.replace(second=0), "192.0.2.4", "192.0.2.4", "rcpt", "reject",
                          "unknown_rcpt")].count == 2
    assert writer.events_waiting() == 8  # 9 emitted, 1 dropped
    assert writer.aggregated == 8 - writer.rows_waiting()


def test_relay_keeps_every_prober_through_a_store_outage(start_relay, own_postgres) -> None:  # type: ignore[no-untyped-def]
    """Thirty hosts probe ten unknown recipients each while the store is down, through a
    relay whose event buffer holds 100 rows (330 events): when the store is back, the
    scorer sees every host with all ten probes, and blocks each one."""
    url = own_postgres.create_database()
    relay = start_relay(url, aliases=ALIASES, extra_store="event_buffer = 100",
                        extra=SCORING % "1h")
    probers = [f"127.0.1.{i}" for i in range(1, 31)]
    own_postgres.pause()
    for source in probers:
        dictionary_attack(relay, source, tries=10)
    relay.wait_for_log(r"event buffer over half full, folding events per host and reason "
                       r"capacity=100")
    relay.wait_for_log(r"store unreachable, events wait in memory")
    own_postgres.resume()
    engine = make_engine(url)
    probes = (select(Event.host, events_counted()).where(Event.reason == "unknown_rcpt")
              .group_by(Event.host))

    def every_probe() -> list[tuple[str, int]] | None:
        with engine.connect() as conn:
            got = sorted((h, int(n)) for h, n in conn.execute(probes))
        return got if got == sorted((p, 10) for p in probers) else None

    wait_until(every_probe, timeout=60, what="every probe counted")
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(Event)).scalar_one()
    assert rows < event_count(engine)  # folded, and nothing was dropped:
    assert "event buffer full" not in relay.log()
    for source in probers:
        wait_until(lambda s=source: refused_at_connect(relay, s), what=f"{source} blocked")
    engine.dispose()


def test_trace_finds_every_session_a_folded_row_stands_for(start_relay, own_postgres) -> None:  # type: ignore[no-untyped-def]
    """Sessions whose refusals were folded into another session's row while the store was
    down are still found by their own `[ref ...]`: the row names them."""
    from tests.support import floodgate, split_ref
    from tests.test_blocking import connect
    from tests.test_trace import trace_json

    url = own_postgres.create_database()
    relay = start_relay(url, aliases=ALIASES, extra_store="event_buffer = 20")
    own_postgres.pause()
    refs = []
    for _ in range(8):
        with connect(relay, "127.0.1.7") as smtp:
            smtp.ehlo("prober.test")
            smtp.mail("x@prober.test")
            for i in range(3):
                code, text = smtp.rcpt(f"guess{i}@example.org")
                assert code == 550
            refs.append(split_ref(text.decode())[1])
    relay.wait_for_log(r"event buffer over half full, folding events per host and reason")
    own_postgres.resume()
    engine = make_engine(url)
    wait_until(lambda: event_count(engine) == 8 * 4, timeout=60, what="every event written")
    engine.dispose()
    folded_only = 0
    for ref in refs:
        stories = trace_json(relay, ref)["sessions"]
        # its refusals: in its own story, or in the row of the session they were folded into
        refusals = [e for st in stories for e in st["events"] if e["reason"] == "unknown_rcpt"
                    and (st["session"] == ref or ref in e["folded"])]
        assert refusals, ref
        folded_only += all(ref in e["folded"] for e in refusals)
    assert folded_only  # the path under test: found through another session's row
    shown = floodgate(relay.config, "trace", refs[-1]).stdout
    assert "folded in a flood; also of sessions " in shown and refs[-1] in shown
