"""Reports: known events with known answers in every format, the rollups the event writer
keeps, retention, the 0003 migration, and real traffic through a running relay."""

from __future__ import annotations

import csv
import io
import json
import smtplib
import struct
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, DateTime, Engine, MetaData, Table, func, insert, select

from blocklist import blocks
from blocklist import reports as rp
from relay.config import ConfigError, load_config
from relay.events.record import EventRecord, as_row, write_rows
from relay.store.database import _alembic_config, head_revision, make_engine, upgrade
from relay.store.rollups import (
    HOUR,
    MINUTE,
    HostRollup,
    HostTotal,
    TimelineRollup,
    floor,
    prune,
)
from relay.store.tables import Base, Event
from tests.support import floodgate, free_port, wait_until, write_config

pytest_plugins = ["tests.scanner_fixtures"]

WEIGHTS = {"unknown_rcpt": 1, "relay_denied": 2, "virus": 5, "spam": 3, "dnsbl": 1,
           "protocol": 2, "trap": 10, "blocked": 1, "size": 0, "too_many_rcpts": 0,
           "accepted": -1}
ZEN = "score=2 zen.test=127.0.0.2*1 bl.test=127.0.0.4*1"

# (client, host, stage, action, reason, how many, recipient, detail)
KNOWN = [
    ("192.0.2.1", "192.0.2.1", "connect", "accept", "connect", 3, "", ""),
    ("192.0.2.1", "192.0.2.1", "rcpt", "accept", "known_rcpt", 2, "alice@example.org", ""),
    ("192.0.2.1", "192.0.2.1", "rcpt", "reject", "unknown_rcpt", 6, "a@example.org", ""),
    ("192.0.2.1", "192.0.2.1", "rcpt", "reject", "unknown_rcpt", 4, "b@example.org", ""),
    ("192.0.2.1", "192.0.2.1", "data", "accept", "accepted", 1, "alice@example.org", ""),
    ("192.0.2.1", "192.0.2.1", "data", "reject", "virus", 2, "alice@example.org",
     "Worm.Mydoom.M"),
    ("192.0.2.1", "192.0.2.1", "delivery", "accept", "delivered", 1, "alice@example.org", ""),
    ("192.0.2.2", "192.0.2.2", "connect", "accept", "connect", 1, "", ""),
    ("192.0.2.2", "192.0.2.2", "rcpt", "reject", "relay_denied", 5, "x@elsewhere.test", ""),
    ("192.0.2.2", "192.0.2.2", "data", "reject", "spam", 1, "bob@example.org", ""),
    ("192.0.2.2", "192.0.2.2", "rcpt", "tempfail", "too_many_rcpts", 1, "bob@example.org", ""),
    ("192.0.2.2", "192.0.2.2", "data", "tempfail", "clamav_error", 1, "bob@example.org", ""),
    ("192.0.2.3", "192.0.2.3", "connect", "reject", "blocked", 4, "", "192.0.2.3"),
    ("192.0.2.3", "192.0.2.3", "connect", "reject", "dnsbl", 2, "", ZEN),
    ("192.0.2.3", "192.0.2.3", "connect", "reject", "dnsbl", 1, "", "score=1 zen.test=127.0.0.3*1"),
    ("2001:db8:1:2::25", "2001:db8:1:2::/64", "connect", "accept", "connect", 2, "", ""),
    ("2001:db8:1:2::25", "2001:db8:1:2::/64", "command", "reject", "protocol", 1, "", ""),
    ("2001:db8:1:2::25", "2001:db8:1:2::/64", "mail", "reject", "size", 1, "", ""),
    ("2001:db8:1:2::26", "2001:db8:1:2::/64", "rcpt", "reject", "trap", 3, "trap@example.org",
     ""),
]
OLD = ("198.51.100.9", "198.51.100.9", "rcpt", "reject", "unknown_rcpt", 5, "old@example.org",
       "")


def host_row(host: str, conn: int, acc: int, rej: int, tempfail: int, score: float,
             **refused: int) -> dict[str, object]:
    row: dict[str, object] = {"host": host, "connections": conn, "accepted": acc,
                              "rejected": rej}
    row.update({r: refused.get(r, 0) for r in rp.REJECTS})
    row.update(other=refused.get("other", 0), tempfail=tempfail, observed=0, greylisted=0,
               greylist_passed=0, score=score,
               blocked_until=None)
    return row


EXPECTED_HOSTS = [
    host_row("192.0.2.1", 3, 1, 12, 0, 19, unknown_rcpt=10, virus=2),
    host_row("192.0.2.3", 7, 0, 7, 0, 7, blocked=4, dnsbl=3),
    host_row("192.0.2.2", 1, 0, 6, 2, 13, relay_denied=5, spam=1),
    host_row("2001:db8:1:2::/64", 2, 0, 5, 0, 32, protocol=1, trap=3, other=1),
]
EXPECTED_OUTCOMES = {"accepted": 1, "unknown_rcpt": 10, "trap": 3, "relay_denied": 5,
                     "virus": 2, "spam": 1, "dnsbl": 3, "blocked": 4, "protocol": 1,
                     "other": 1, "tempfail": 2, "observed": 0}


@dataclass
class Store:
    url: str
    engine: Engine
    records: list[EventRecord]
    now: datetime


def records(spec: list[tuple], start: datetime, spacing: timedelta) -> list[EventRecord]:  # type: ignore[type-arg]
    out: list[EventRecord] = []
    for client, host, stage, action, reason, n, rcpt, detail in spec:
        for _ in range(n):
            out.append(EventRecord(ts=start - spacing * len(out), node="t", client=client,
                                   host=host, stage=stage, action=action, reason=reason,
                                   recipient=rcpt, detail=detail))
    return out


def write(engine: Engine, rows: list[EventRecord], batch: int = 7) -> None:
    """As the event writer process writes, in small batches so the rollup upserts meet
    themselves."""
    for i in range(0, len(rows), batch):
        with engine.begin() as conn:
            write_rows(conn, [as_row(r) for r in rows[i:i + batch]])


@pytest.fixture
def known(store_url: str) -> Store:
    engine = make_engine(store_url)
    upgrade(engine)
    now = datetime.now(UTC)
    rows = records(KNOWN, now - timedelta(minutes=5), timedelta(seconds=50))
    rows += records([OLD], now - timedelta(hours=30), timedelta(minutes=1))
    write(engine, rows)
    return Store(store_url, engine, rows, now)


@pytest.fixture
def config(tmp_path: Path, known: Store, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COLUMNS", "200")  # rich tables in the subprocess: no truncation
    return write_config(tmp_path / "reports.toml", store_url=known.url, port=free_port())


def report(config: Path, *args: str) -> str:
    return floodgate(config, "report", *args).stdout


# -- hosts -----------------------------------------------------------------------------


def test_hosts_json_has_the_known_counts(config: Path) -> None:
    assert json.loads(report(config, "hosts", "--format", "json")) == EXPECTED_HOSTS


def test_hosts_csv_parses_back_to_the_same_counts(config: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(report(config, "hosts", "--format", "csv"))))
    assert list(rows[0]) == list(rp.HOST_FIELDS)
    parsed = [{k: (v if k == "host" else None if v == "" else float(v) if k == "score"
                   else int(v)) for k, v in row.items()} for row in rows]
    assert parsed == EXPECTED_HOSTS


def test_hosts_table(config: Path) -> None:
    text = report(config, "hosts")
    lines = [line for line in text.splitlines() if "192.0.2." in line or "2001:" in line]
    assert [line.split()[0] for line in lines] == [r["host"] for r in EXPECTED_HOSTS]
    assert lines[0].split() == ["192.0.2.1", "3", "1", "12", "10", "0", "0", "2", "0", "0",
                                "0", "0", "0", "0", "19"]
    assert "198.51.100.9" not in text


def test_hosts_top_reason_and_window(config: Path) -> None:
    top = json.loads(report(config, "hosts", "--top", "2", "--format", "json"))
    assert [r["host"] for r in top] == ["192.0.2.1", "192.0.2.3"]
    virus = json.loads(report(config, "hosts", "--reason", "virus", "--format", "json"))
    assert [r["host"] for r in virus] == ["192.0.2.1"]
    unknown = json.loads(report(config, "hosts", "--since", "48h", "--reason", "unknown_rcpt",
                                "--format", "json"))
    assert [(r["host"], r["unknown_rcpt"]) for r in unknown] == [("192.0.2.1", 10),
                                                                 ("198.51.100.9", 5)]
    # the score stays the one over the scoring window (24h), whatever the report's window
    assert unknown[1]["score"] == 0


def test_hosts_by_any_event_reason(config: Path, known: Store) -> None:
    """`--reason` takes every event reason (relay/reasons.py), rate_limit too."""
    write(known.engine, records([("203.0.113.9", "203.0.113.9", "connect", "tempfail",
                                  "rate_limit", 2, "", "")], known.now, timedelta(seconds=1)))
    rows = json.loads(report(config, "hosts", "--reason", "rate_limit", "--format", "json"))
    assert [r["host"] for r in rows] == ["203.0.113.9"]


def test_hosts_show_when_blocked(config: Path, known: Store) -> None:
    state = blocks.add_manual(known.engine, "192.0.2.0/24", 3600, "test")
    rows = json.loads(report(config, "hosts", "--format", "json"))
    until = {r["host"]: r["blocked_until"] for r in rows}
    assert until["192.0.2.2"] == state.expires.isoformat()
    assert until["2001:db8:1:2::/64"] is None


def test_window_edge_inside_a_bucket_is_exact(store_url: str) -> None:
    """Whole hours come from the rollup, the part before them from the events: an event
    in the same hour as `since` but before it is not counted."""
    engine = make_engine(store_url)
    upgrade(engine)
    base = floor(datetime.now(UTC), HOUR) - 3 * HOUR
    spec = ("203.0.113.7", "203.0.113.7", "rcpt", "reject", "unknown_rcpt", 1, "z@example.org",
            "")
    write(engine, [r for m in (10, 30, 90, 150) for r in records([spec],
                                                                 base + timedelta(minutes=m),
                                                                 timedelta(0))])

    def unknown(since: datetime) -> int:
        [h] = rp.hosts_report(engine, since=since, top=0, reason=None, weights=WEIGHTS,
                              score_since=since, active=[])
        return h.refused["unknown_rcpt"]

    assert unknown(base + timedelta(minutes=20)) == 3
    assert unknown(base) == 4
    assert unknown(base + timedelta(minutes=31)) == 2
    assert unknown(base + HOUR) == 2


# -- timeline --------------------------------------------------------------------------


def expected_buckets(rows: list[EventRecord], step: timedelta) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        kind = rp.outcome(r.stage, r.action, r.reason)
        if kind is not None:
            slot = out.setdefault(floor(r.ts, step).isoformat(), dict.fromkeys(rp.OUTCOMES, 0))
            slot[kind] += 1
    return out


@pytest.mark.parametrize("bucket", ["1m", "1h"])
def test_timeline_csv_and_json(config: Path, known: Store, bucket: str) -> None:
    step = {"1m": MINUTE, "1h": HOUR}[bucket]
    before = datetime.now(UTC)
    data = json.loads(report(config, "timeline", "--bucket", bucket, "--format", "json"))
    after = datetime.now(UTC)
    assert data["bucket"] == bucket
    got = {b["time"]: {o: b[o] for o in rp.OUTCOMES} for b in data["buckets"]}
    assert {t: c for t, c in got.items() if any(c.values())} == expected_buckets(known.records,
                                                                                step)
    times = [datetime.fromisoformat(t) for t in got]
    assert all(b - a == step for a, b in pairwise(times))  # zero-filled
    # the window starts 48h before the report's own clock, which lies between these two
    window = timedelta(hours=48)
    assert floor(before - window, step) <= times[0] <= floor(after - window, step)
    rows = list(csv.DictReader(io.StringIO(report(config, "timeline", "--bucket", bucket,
                                                  "--format", "csv"))))
    # a second run reads its own clock: its buckets may sit one step later, same counts
    again = {r["time"]: {o: int(r[o]) for o in rp.OUTCOMES} for r in rows}
    assert len(again) == len(got)
    assert {t: c for t, c in again.items() if any(c.values())} == \
        {t: c for t, c in got.items() if any(c.values())}


def test_timeline_table_and_png(config: Path, tmp_path: Path) -> None:
    png = tmp_path / "out" / "timeline.png"
    png.parent.mkdir()
    proc = floodgate(config, "report", "timeline", "--since", "24h", "--bucket", "1h",
                     "--png", str(png))
    total = next(line for line in proc.stdout.splitlines() if "total" in line)
    assert total.split()[1:] == [str(v) for v in EXPECTED_OUTCOMES.values() if v]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1200, 600)
    assert len(data) > 10_000  # something was drawn


def test_png_of_an_empty_window(tmp_path: Path) -> None:
    from blocklist.charts import draw_timeline

    now = datetime.now(UTC)
    tl = rp.build_timeline([], floor(now, HOUR), floor(now, HOUR) + HOUR, MINUTE)
    data = draw_timeline(tl, tmp_path / "empty.png", width=640, height=320).read_bytes()
    assert struct.unpack(">II", data[16:24]) == (640, 320)


# -- summary ---------------------------------------------------------------------------


def test_summary(config: Path, known: Store) -> None:
    blocks.add_manual(known.engine, "192.0.2.3", 3600, "by hand")
    data = json.loads(report(config, "summary", "--format", "json"))
    assert data["outcomes"] == EXPECTED_OUTCOMES
    assert data["connections"] == 13
    assert data["delivery"] == {"delivered": 1, "deferred": 0, "bounced": 0}
    assert data["viruses"] == {"Worm.Mydoom.M": 2}
    assert list(data["recipients"].items()) == [("a@example.org", 6), ("b@example.org", 4),
                                                ("trap@example.org", 3)]
    assert data["dnsbl_zones"] == {"zen.test": 3, "bl.test": 2}
    assert [b["network"] for b in data["blocked"]] == ["192.0.2.3"]
    assert (data["queued"], data["held"]) == (0, 0)
    text = report(config, "summary")
    for needle in ("13 connections", "Worm.Mydoom.M", "a@example.org", "zen.test",
                   "hosts blocked now: 1", "queue: 0 messages"):
        assert needle in text


# -- rollups, retention, migration -----------------------------------------------------


def raw_counts(engine: Engine, step: timedelta, host: bool) -> Counter[tuple[object, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(select(Event.ts, Event.host, Event.stage, Event.action,
                                   Event.reason)).all()
    return Counter((floor(ts, step), *((h,) if host else ()), s, a, r)
                   for ts, h, s, a, r in rows)


def host_totals(engine: Engine) -> tuple[dict[tuple[object, ...], tuple[int, int]],
                                         dict[tuple[object, ...], tuple[int, int]]]:
    """host_totals as stored, and as counted from the raw events (no delivery stage)."""
    raw: dict[tuple[object, ...], list[int]] = {}
    with engine.connect() as conn:
        for ts, h, stage, action in conn.execute(select(Event.ts, Event.host, Event.stage,
                                                        Event.action)):
            if stage != "delivery":
                t = raw.setdefault((floor(ts, HOUR), h), [0, 0])
                t[0] += action == "reject"
                t[1] += action == "tempfail"
        stored = {(blocks.utc(b), h): (r, t) for b, h, r, t in conn.execute(
            select(HostTotal.bucket, HostTotal.host, HostTotal.rejected, HostTotal.tempfail))}
    return stored, {k: (r, t) for k, (r, t) in raw.items()}


def rolled(engine: Engine) -> tuple[Counter[tuple[object, ...]], Counter[tuple[object, ...]]]:
    with engine.connect() as conn:
        hosts = Counter({(blocks.utc(b), h, s, a, r): n for b, h, s, a, r, n in conn.execute(
            select(HostRollup.bucket, HostRollup.host, HostRollup.stage, HostRollup.action,
                   HostRollup.reason, HostRollup.total))})
        minutes = Counter({(blocks.utc(b), s, a, r): n for b, s, a, r, n in conn.execute(
            select(TimelineRollup.bucket, TimelineRollup.stage, TimelineRollup.action,
                   TimelineRollup.reason, TimelineRollup.total))})
    return hosts, minutes


def test_writer_keeps_rollups_equal_to_the_events(known: Store) -> None:
    hosts, minutes = rolled(known.engine)
    assert hosts == raw_counts(known.engine, HOUR, host=True)
    assert minutes == raw_counts(known.engine, MINUTE, host=False)
    assert sum(hosts.values()) == len(known.records)
    stored, raw = host_totals(known.engine)
    assert stored == raw and sum(r for r, _ in stored.values()) == 12 + 7 + 6 + 5 + 5


def test_retention_prunes_events_before_rollups(store_url: str) -> None:
    engine = make_engine(store_url)
    upgrade(engine)
    now = datetime.now(UTC)
    spec = ("192.0.2.9", "192.0.2.9", "rcpt", "reject", "unknown_rcpt", 25, "q@example.org", "")
    write(engine, records([spec], now - timedelta(days=40), timedelta(minutes=1))
          + records([spec], now - timedelta(hours=1), timedelta(minutes=1)), batch=500)
    assert prune(engine, events_before=now - timedelta(days=30),
                 rollups_before=now - timedelta(days=400), chunk=10) == (25, 0)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Event)).scalar_one() == 25
    since = floor(now - timedelta(days=41), HOUR)
    [h] = rp.hosts_report(engine, since=since, top=0, reason=None, weights=WEIGHTS,
                          score_since=since, active=[])
    assert h.refused["unknown_rcpt"] == 50  # the old ones live on in the rollups
    _, deleted = prune(engine, events_before=None, rollups_before=now - timedelta(days=35))
    assert deleted > 0
    [h] = rp.hosts_report(engine, since=since, top=0, reason=None, weights=WEIGHTS,
                          score_since=since, active=[])
    assert h.refused["unknown_rcpt"] == 25


def test_migration_0003_fills_rollups_from_existing_events(store_url: str) -> None:
    engine = make_engine(store_url)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    rows = records(KNOWN, datetime(2026, 3, 1, 12, 30, 59, 123456, tzinfo=UTC),
                   timedelta(seconds=41, microseconds=7))
    # as the code of 0002's time wrote them (a DateTime, text on SQLite; see 0006)
    # (no `count` either: 0007 adds it; nor `session` and `message_id`: 0008; nor
    # `folded`: 0010)
    later = ("count", "session", "message_id", "folded")
    legacy = Table("events", MetaData(), *(
        Column(c.name, DateTime(timezone=True) if c.name == "ts" else c.type)
        for c in Event.__table__.columns if c.name not in ("id", *later)))
    with engine.begin() as conn:
        conn.execute(insert(legacy), [{k: getattr(r, k) for k in r.__dataclass_fields__
                                       if k not in later} for r in rows])
    assert upgrade(engine) == ("0002", head_revision())  # 0003 and later ones
    with engine.connect() as conn:  # the migration builds exactly what the models say
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    with engine.connect() as conn:  # 0006: the same instants, to the microsecond
        assert sorted(conn.scalars(select(Event.ts))) == sorted(r.ts for r in rows)
    hosts, minutes = rolled(engine)
    assert hosts == raw_counts(engine, HOUR, host=True)
    assert minutes == raw_counts(engine, MINUTE, host=False)
    stored, raw = host_totals(engine)  # 0005 fills them from the rollups 0003 made
    assert stored == raw and stored
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    assert upgrade(engine) == ("0002", head_revision())  # 0003 and later ones


def test_config_sections(tmp_path: Path) -> None:
    base = write_config(tmp_path / "c.toml", store_url="sqlite:///x.db", port=2525)
    text = base.read_text()
    base.write_text(text + '[metrics]\nlisten = "127.0.0.1:9125"\n[retention]\nevents = "7d"\n')
    config = load_config(str(base))
    assert config.metrics.endpoint() == ("127.0.0.1", 9125)
    assert (config.retention.events, config.retention.rollups) == (7 * 86400, 400 * 86400)
    assert load_config(str(write_config(tmp_path / "d.toml", store_url="sqlite:///x.db",
                                        port=2525))).metrics.endpoint() is None
    for extra, key in (('[metrics]\nlisten = "nowhere"\n', "metrics.listen"),
                       ('[retention]\nrollups = "1d"\n', "retention"),
                       ('[retention]\nevents = "soon"\n', "retention.events"),
                       ("[metrics]\nport = 1\n", "metrics.port: unknown key")):
        base.write_text(text + extra)
        with pytest.raises(ConfigError) as e:
            load_config(str(base))
        assert any(p.startswith(key) for p in e.value.problems), e.value.problems


# -- real traffic ----------------------------------------------------------------------


def smtp_from(relay, n: int) -> smtplib.SMTP:  # type: ignore[no-untyped-def]
    smtp = smtplib.SMTP("127.0.0.1", relay.port, timeout=10,
                        source_address=(f"127.0.0.{n}", 0))
    smtp.ehlo("client.test")
    return smtp


def test_report_after_real_traffic(start_relay, store_url: str, clamd, spamd,  # type: ignore[no-untyped-def]
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_content import eml, scanners
    from tests.test_smtp import ALIASES

    relay = start_relay(store_url, aliases=ALIASES,
                        extra=scanners(clamd.unix_address, spamd.address)
                        + "[scoring]\nenabled = false\n[blocklist]\nprotect_loopback = false\n")
    floodgate(relay.config, "block", "add", "127.0.0.5", "--for", "1h")
    relay.wait_for_log(r"blocks loaded .*active=1")
    with smtp_from(relay, 2) as smtp:  # dictionary attack, one relay attempt, one good message
        refused = smtp.sendmail("s@sender.test", ["nobody1@example.org", "nobody2@example.org",
                                                  "nobody3@example.org", "x@elsewhere.test",
                                                  "alice@example.org"], eml("clean.eml"))
        assert sorted(code for code, _ in refused.values()) == [550, 550, 550, 554]
    for message, code in (("eicar.eml", 554), ("gtube.eml", 550)):
        with smtp_from(relay, 3) as smtp, pytest.raises(smtplib.SMTPDataError) as e:
            smtp.sendmail("s@sender.test", ["bob@example.org"], eml(message))
        assert e.value.smtp_code == code
    with smtp_from(relay, 4) as smtp:
        assert smtp.docmd("RCPT TO:<alice@example.org>")[0] == 503
        assert smtp.docmd("FOO")[0] == 500
    for _ in range(2):
        with pytest.raises(smtplib.SMTPConnectError) as blocked:
            smtp_from(relay, 5)
        assert blocked.value.smtp_code == 554

    engine = make_engine(store_url)

    def smtp_events() -> int:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(Event).where(
                Event.stage != "delivery")).scalar_one()

    wait_until(lambda: smtp_events() == 18, what="18 SMTP events written")
    monkeypatch.setenv("COLUMNS", "200")
    rows = json.loads(floodgate(relay.config, "report", "hosts", "--format", "json").stdout)
    until = {r["host"]: r.pop("blocked_until") for r in rows}
    expected = [host_row("127.0.0.2", 1, 1, 4, 0, 4, unknown_rcpt=3, relay_denied=1),
                host_row("127.0.0.3", 2, 0, 2, 0, 8, virus=1, spam=1),
                host_row("127.0.0.4", 1, 0, 2, 0, 4, protocol=2),
                host_row("127.0.0.5", 2, 0, 2, 0, 2, blocked=2)]
    for row in expected:
        del row["blocked_until"]
    assert rows == expected
    assert until["127.0.0.5"] is not None and until["127.0.0.2"] is None
    table = floodgate(relay.config, "report", "hosts").stdout
    assert "127.0.0.5" in table and "127.0.0.2" in table



def test_png_y_axis_has_round_ticks_in_the_console_palette() -> None:
    """The PNG's y axis: from 0 in steps of 1, 2 or 5 x 10^n up to the first tick over the
    tallest stack (matplotlib's own choice allows 2.5 and stops at a margin); the bands in
    blocklist/chart_style.py's colours, as the console draws them."""
    from matplotlib.colors import to_hex

    from blocklist.chart_style import OUTCOME_COLOURS
    from blocklist.charts import build_figure

    start = datetime(2024, 5, 1, tzinfo=UTC)
    for peak in (1, 7, 10, 37, 250, 1234, 99_999):
        buckets = [(start + i * HOUR, dict.fromkeys(rp.OUTCOMES, 0)) for i in range(6)]
        buckets[2][1]["accepted"] = peak // 2
        buckets[2][1]["virus"] = peak - peak // 2
        buckets[4][1]["accepted"] = 1
        fig = build_figure(rp.Timeline(start, start + 6 * HOUR, HOUR, buckets))
        fig.canvas.draw()
        ax = fig.axes[0]
        ticks = [float(t) for t in ax.get_yticks()]
        step = ticks[1] - ticks[0]
        assert ticks[0] == 0 and step.is_integer()
        assert str(int(step)).rstrip("0") in ("1", "2", "5"), ticks
        assert all(b - a == step for a, b in pairwise(ticks)), ticks
        assert ticks[-1] >= peak and ticks[-2] < peak, (peak, ticks)
        assert ax.get_ylim() == (0, ticks[-1])
        assert [t.get_text() for t in ax.get_yticklabels()] == [f"{int(t):,}" for t in ticks]
        bands = {to_hex(c.get_facecolor()[0]) for c in ax.collections}
        assert bands == {OUTCOME_COLOURS["accepted"], OUTCOME_COLOURS["virus"]}
