"""Greylisting ([greylist]) against running relays: a new (network, sender, recipient)
triplet gets a 451 4.7.1, a retry after `delay` passes, on any relay sharing the store.

Time without sleeps: `delay` is an hour, and a test that needs the hour to have passed moves
the triplet's first attempt back in the store (what the relay reads), rather than waiting.
Client addresses come from 127.0.0.0/8, a /24 per test case (greylisting keys on the /24)."""

from __future__ import annotations

import smtplib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from relay.store.database import make_engine
from relay.store.greylist_tables import GreylistHost, GreylistTriplet
from relay.store.tables import Event
from tests.support import floodgate, split_ref, wait_until
from tests.test_smtp import ALIASES, MESSAGE

GREYLIST = """
[greylist]
enabled = true
delay = "1h"
retry_window = "1d"
opt_out = ["Example.NET"]
[blocklist]
protect_loopback = false
allow = ["127.0.9.0/24"]
"""
GREYLISTED = ("451 4.7.1 <alice@example.org>: Recipient address rejected: Greylisted, "
              "try again later")


def rcpt(relay, source: str, sender: str = "news@sender.test",  # type: ignore[no-untyped-def]
         to: str = "alice@example.org") -> tuple[int, str]:
    """One transaction's RCPT reply, the message sent when it was accepted."""
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10,
                      source_address=(source, 0)) as smtp:
        smtp.ehlo("mta.sender.test")
        assert smtp.mail(sender)[0] == 250
        code, text = smtp.rcpt(to)
        if code == 250:
            assert smtp.data(MESSAGE)[0] == 250
        return code, text.decode()


def backdate(engine, network: str, by: timedelta) -> None:  # type: ignore[no-untyped-def]
    """The first attempt of every triplet from `network` happened `by` earlier."""
    with engine.begin() as conn:
        conn.execute(update(GreylistTriplet).where(GreylistTriplet.network == network)
                     .values(first_seen=datetime.now(UTC) - by))


def test_retry_passes_on_another_relay_sharing_the_store(start_relay, postgres) -> None:  # type: ignore[no-untyped-def]
    url = postgres.create_database()
    one = start_relay(url, name="one", aliases=ALIASES, extra=GREYLIST)
    two = start_relay(url, name="two", extra=GREYLIST)
    engine = make_engine(url)
    code, text = rcpt(one, "127.0.1.5")
    assert (code, split_ref(f"{code} {text}")[0]) == (451, GREYLISTED)
    # too early, on either relay: still greylisted
    assert rcpt(two, "127.0.1.6")[0] == 451
    assert rcpt(one, "127.0.1.5")[0] == 451
    backdate(engine, "127.0.1.0/24", timedelta(minutes=61))
    # the retry reaches the other relay, from a neighbour in the sender's pool: passes
    assert rcpt(two, "127.0.1.7")[0] == 250
    with engine.connect() as conn:
        network, expires = conn.execute(
            select(GreylistHost.network, GreylistHost.expires)).one()
    assert network == "127.0.1.0/24"
    assert expires > datetime.now(UTC) + timedelta(days=34)
    # auto-allowlisted: a new sender from that network is not greylisted, on either relay
    assert rcpt(one, "127.0.1.5", sender="other@sender.test")[0] == 250
    assert rcpt(two, "127.0.1.9", sender="third@sender.test")[0] == 250
    # the reports count both
    wait_until(lambda: _reasons(engine).get("greylist_passed") == 1, what="passed event")
    assert _reasons(engine)["greylisted"] == 3
    hosts = floodgate(one.config, "report", "hosts", "--format", "csv").stdout
    assert "greylisted" in hosts.splitlines()[0]
    summary = floodgate(one.config, "report", "summary").stdout
    assert "greylisted" in summary and "greylist_passed" in summary
    engine.dispose()


def _reasons(engine) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        rows = conn.execute(select(Event.reason, Event.count).where(
            Event.reason.like("greylist%"))).all()
    out: dict[str, int] = {}
    for reason, n in rows:
        out[reason] = out.get(reason, 0) + n
    return out


@pytest.fixture
def relay(start_relay, sqlite_url):  # type: ignore[no-untyped-def]
    return start_relay(sqlite_url, aliases=ALIASES, extra=GREYLIST)


def test_retry_after_the_window_starts_again(relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(sqlite_url)
    assert rcpt(relay, "127.0.2.5")[0] == 451
    backdate(engine, "127.0.2.0/24", timedelta(days=2))
    assert rcpt(relay, "127.0.2.5")[0] == 451  # too late: a new first attempt
    backdate(engine, "127.0.2.0/24", timedelta(hours=2))
    assert rcpt(relay, "127.0.2.5")[0] == 250
    engine.dispose()


def test_never_greylisted(relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(sqlite_url)
    # an allowlisted network ([blocklist] allow), the relay's own address
    assert rcpt(relay, "127.0.9.5")[0] == 250
    assert rcpt(relay, "127.0.0.1")[0] == 250
    # a domain that opted out (written in another case in the config)
    assert rcpt(relay, "127.0.3.5", to="carol@example.net")[0] == 250
    # ... and that accepted message is good history: the host is not greylisted elsewhere
    # either, once its accepted event is in the store
    wait_until(lambda: _accepted(engine, "127.0.3.5"), what="accepted event")
    assert rcpt(relay, "127.0.3.5")[0] == 250
    # its neighbour has no history of its own
    assert rcpt(relay, "127.0.3.6")[0] == 451
    # a sender on the sender allow list
    floodgate(relay.config, "sender", "allow", "add", "partner.example")
    relay.wait_for_log(r"sender lists loaded generation=1 ")
    assert rcpt(relay, "127.0.6.5", sender="news@partner.example")[0] == 250  # no triplet
    # unknown recipients are refused as such, never greylisted (a dictionary attack learns
    # nothing from the 451)
    assert rcpt(relay, "127.0.4.5", to="nobody@example.org")[0] == 550
    with engine.connect() as conn:
        triplets = conn.execute(select(GreylistTriplet.sender, GreylistTriplet.recipient)).all()
    assert {tuple(t) for t in triplets} == {("news@sender.test", "alice@example.org")}
    engine.dispose()


def _accepted(engine, host: str) -> bool:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(Event.id).where(
            Event.host == host, Event.reason == "accepted")).first() is not None


def test_off_by_default(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra="[blocklist]\nprotect_loopback = false")
    assert rcpt(relay, "127.0.5.5")[0] == 250


def test_stale_triplets_and_expired_networks_are_pruned(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra=GREYLIST + '[retention]\ninterval = "0.2s"\n')
    engine = make_engine(sqlite_url)
    assert rcpt(relay, "127.0.7.5")[0] == 451
    assert rcpt(relay, "127.0.7.6", sender="kept@sender.test")[0] == 451
    long_ago = datetime.now(UTC) - timedelta(days=36)
    with engine.begin() as conn:
        conn.execute(update(GreylistTriplet).where(GreylistTriplet.sender == "news@sender.test")
                     .values(first_seen=long_ago, last_seen=long_ago))
        conn.execute(GreylistHost.__table__.insert().values(
            network="127.0.8.0/24", expires=datetime.now(UTC) - timedelta(seconds=1), passes=1))

    def left() -> tuple[list[str], int]:
        with engine.connect() as conn:
            return (conn.execute(select(GreylistTriplet.sender)).scalars().all(),
                    len(conn.execute(select(GreylistHost.network)).all()))

    wait_until(lambda: left() == (["kept@sender.test"], 0), what="pruned")
    # the expired network is greylisted again
    assert rcpt(relay, "127.0.8.5")[0] == 451
    engine.dispose()


def test_pending_triplets_per_network_are_capped(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """A bot with a fresh sender every attempt: greylisted every time, but its network
    stores only `max_pending` triplets; one of them retried lets the network in."""
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra=GREYLIST.replace("opt_out", "max_pending = 3\nopt_out"))
    engine = make_engine(sqlite_url)
    for n in range(8):
        code, text = rcpt(relay, "127.0.10.5", sender=f"r{n}@bot.test")
        assert (code, split_ref(f"{code} {text}")[0]) == (451, GREYLISTED)
    assert rcpt(relay, "127.0.11.5", sender="news@sender.test")[0] == 451  # its own count

    def stored(network: str) -> list[str]:
        with engine.connect() as conn:
            return sorted(conn.execute(select(GreylistTriplet.sender).where(
                GreylistTriplet.network == network)).scalars())

    assert stored("127.0.10.0/24") == ["r0@bot.test", "r1@bot.test", "r2@bot.test"]
    assert stored("127.0.11.0/24") == ["news@sender.test"]
    # a triplet not stored, retried after the delay, is still only greylisted ...
    backdate(engine, "127.0.10.0/24", timedelta(minutes=61))
    assert rcpt(relay, "127.0.10.5", sender="r5@bot.test")[0] == 451
    # ... a stored one passes, and with it the network
    assert rcpt(relay, "127.0.10.5", sender="r1@bot.test")[0] == 250
    assert rcpt(relay, "127.0.10.6", sender="r7@bot.test")[0] == 250
    # rows first seen before the retry window are no longer pending: room for new ones
    with engine.begin() as conn:
        conn.execute(GreylistTriplet.__table__.insert(), [
            {"key": f"k{n}", "network": "127.0.12.0/24", "sender": f"old{n}@bot.test",
             "recipient": "alice@example.org", "first_seen": datetime.now(UTC) - timedelta(days=2),
             "last_seen": datetime.now(UTC) - timedelta(days=2), "passed": None, "attempts": 1}
            for n in range(3)])
    assert rcpt(relay, "127.0.12.5", sender="fresh@bot.test")[0] == 451
    assert "fresh@bot.test" in stored("127.0.12.0/24")
    engine.dispose()
