"""`floodgate trace` and `GET /api/trace` find real sessions through a running relay again:
by the `[ref ...]` its refusals and queued replies carry, by sender, by recipient, by
Message-ID and by queue id."""

from __future__ import annotations

import json
import re
import smtplib
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from relay.store.database import make_engine
from relay.store.tables import Event
from tests.sink import Sink
from tests.support import floodgate, split_ref, wait_until
from tests.test_delivery import start as deliver_to
from tests.test_smtp import ALIASES
from tests.web_support import READ, relay_extra, web_starter

MESSAGE_ID = "<trace-1.4711@sender.test>"
MESSAGE = (f"From: a@sender.test\r\nTo: alice@example.org\r\nMessage-ID: {MESSAGE_ID}\r\n"
           "Subject: hi\r\n\r\nHello.\r\n").encode()


@pytest.fixture
def start_web():  # type: ignore[no-untyped-def]
    yield from web_starter()


def reasons_stored(url: str, reason: str) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).where(Event.reason == reason)).scalar_one()
    engine.dispose()
    return n


def refuse_unknown(relay) -> str:  # type: ignore[no-untyped-def]
    """A session whose one recipient is unknown; the reference its 550 carries."""
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as smtp:
        smtp.ehlo("refused.test")
        smtp.mail("someone@sender.test")
        code, text = smtp.rcpt("nobody@example.org")
    assert code == 550
    reply, ref = split_ref(text)
    assert reply.startswith("5.1.1 ")  # the enhanced code stays first
    return ref


def queue(relay, sender: str, rcpt: str, message: bytes,  # type: ignore[no-untyped-def]
          also: tuple[str, ...] = ()) -> tuple[str, str]:
    """An accepted message: (its queue id, the session's reference), from the 250."""
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as smtp:
        smtp.ehlo("sender.test")
        smtp.mail(sender)
        for to in (rcpt, *also):
            assert smtp.rcpt(to)[0] == 250
        code, text = smtp.data(message)
    assert code == 250
    reply, ref = split_ref(text)
    m = re.fullmatch(r"2\.0\.0 Ok: queued as (\S+)", reply)
    assert m, reply
    return m.group(1), ref


def trace_json(relay, *args: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return json.loads(floodgate(relay.config, "trace", *args, "--format", "json").stdout)


def test_a_refusals_reference_traces_its_session(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES)
    other = refuse_unknown(relay)
    ref = refuse_unknown(relay)
    assert ref != other
    wait_until(lambda: reasons_stored(sqlite_url, "unknown_rcpt") == 2, what="both refusals")

    shown = floodgate(relay.config, "trace", ref).stdout
    assert f"session {ref}" in shown and other not in shown
    lines = shown.splitlines()
    connect = [x for x in lines if re.search(r" connect +accept +connect +220", x)]
    refused = [x for x in lines if re.search(
        r" rcpt +reject +unknown_rcpt +550  <nobody@example\.org>", x)]
    assert len(connect) == 1 and len(refused) == 1, shown
    assert lines.index(connect[0]) < lines.index(refused[0])  # in order


def test_an_accepted_message_is_found_by_sender_recipient_message_id_and_queue_id(
        start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES)
    queue_id, ref = queue(relay, "alice.sender@sender.test", "alice@example.org", MESSAGE)
    queue(relay, "other@sender.test", "bob@example.org",
          MESSAGE.replace(MESSAGE_ID.encode(), b"<other@sender.test>"))
    wait_until(lambda: reasons_stored(sqlite_url, "accepted") == 2, what="both messages")

    for search in (["--from", "Alice.Sender@sender.test"], ["--to", "alice@example.org"],
                   ["--message-id", MESSAGE_ID.strip("<>")], [queue_id], [ref]):
        found = trace_json(relay, *search)
        assert [s["session"] for s in found["sessions"]] == [ref], search
        [session] = found["sessions"]
        assert session["queue_ids"] == [queue_id]
        accepted = [e for e in session["events"] if e["reason"] == "accepted"]
        assert [(e["queue_id"], e["message_id"], e["code"]) for e in accepted] == \
            [(queue_id, MESSAGE_ID, 250)], search
        assert [e["stage"] for e in session["events"]] == ["connect", "rcpt", "data"]

    shown = floodgate(relay.config, "trace", "--message-id", MESSAGE_ID).stdout
    assert f"queue_id={queue_id}" in shown and f"message_id={MESSAGE_ID}" in shown
    assert floodgate(relay.config, "trace", "--from", "nobody@nowhere.test").stdout.strip() \
        == "nothing found"


def test_the_api_returns_what_the_cli_prints(start_relay, start_web, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES, extra=relay_extra())
    web = start_web(relay.config)
    refused = refuse_unknown(relay)
    queue_id, ref = queue(relay, "api@sender.test", "alice@example.org", MESSAGE)
    wait_until(lambda: reasons_stored(sqlite_url, "accepted") == 1, what="the message")

    with web.client(READ) as api:
        for params, cli in (({"ref": refused}, [refused]),
                            ({"from": "api@sender.test"}, ["--from", "api@sender.test"]),
                            ({"message_id": MESSAGE_ID}, ["--message-id", MESSAGE_ID])):
            r = api.get("/api/trace", params=params)
            assert r.status_code == 200, r.text
            assert r.json() == trace_json(relay, *cli), params
        assert [s["session"] for s in api.get("/api/trace", params={"ref": queue_id})
                .json()["sessions"]] == [ref]
        assert api.get("/api/trace").status_code == 422
    with web.client() as anon:
        assert anon.get("/api/trace", params={"ref": ref}).status_code == 401


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.down()


def test_the_story_goes_on_to_each_delivery_attempt_and_the_dsn(start_relay, sqlite_url,  # type: ignore[no-untyped-def]
                                                                sink) -> None:
    sink.up()
    sink.set_reply("busy@dest.test", "451 4.3.0 Mailbox busy, try later")
    sink.set_reply("gone@dest.test", "550 5.1.1 <gone@dest.test>: no such user")
    relay = deliver_to(start_relay, sqlite_url, sink.hop)
    queue_id, ref = queue(relay, "author@sender.test", "ok@dest.test", MESSAGE, also=(
        "busy@dest.test", "gone@dest.test"))
    wait_until(lambda: sink.attempts("busy@dest.test") >= 2, what="a retry of busy@")
    wait_until(lambda: reasons_stored(sqlite_url, "deferred") >= 2
               and reasons_stored(sqlite_url, "delivered") >= 2, what="the DSN delivered")

    [story] = trace_json(relay, ref)["sessions"]
    delivery = [(e["recipient"], e["reason"], e["queue_id"]) for e in story["events"]
                if e["stage"] == "delivery"]
    assert ("ok@dest.test", "delivered", queue_id) in delivery
    assert delivery.count(("busy@dest.test", "deferred", queue_id)) >= 2
    [bounce] = [e for e in story["events"] if e["reason"] == "bounced"]
    assert bounce["recipient"] == "gone@dest.test" and "550 5.1.1" in bounce["detail"]
    dsn_id = bounce["detail"].rsplit("dsn=", 1)[1]
    assert ("author@sender.test", "delivered", dsn_id) in delivery  # the DSN, to the sender
    shown = floodgate(relay.config, "trace", queue_id).stdout
    assert re.search(r" delivery +tempfail +deferred +451  to=busy@dest\.test .*"
                     r"reply=451 4\.3\.0 Mailbox busy", shown), shown


def hostile_message_id(control: bytes = b"\x1b", xs: int = 230) -> bytes:
    """A Message-ID field of 100 kB: nested angle brackets, a control character, non-ASCII,
    `xs` x's, then 10,000 folded continuation lines (SMTP's lines stay under 1,000)."""
    first = b"<<outer<inner>>" + control + b"caf\xc3\xa9-" + b"x" * xs
    return first + b"".join(b"\r\n p%06d" % i for i in range(10_000)) + b"@hostile.test>"


def with_message_id(field: bytes) -> bytes:
    return (b"From: a@sender.test\r\nTo: bob@example.org\r\nMessage-ID: " + field
            + b"\r\nSubject: hostile\r\n\r\nHello.\r\n")


# the stored id is cut at 255 characters: 24 before the x's (the control character
# escaped as 4), so with 230 x's the cut keeps an unfolded line's blank as its last
@pytest.mark.parametrize("xs", [230, 200])
def test_a_hostile_message_id_is_stored_bounded_and_found_again(start_relay, sqlite_url,  # type: ignore[no-untyped-def]
                                                                xs: int) -> None:
    relay = start_relay(sqlite_url, aliases=ALIASES, max_message_size=1_000_000)
    field = hostile_message_id(xs=xs)
    assert len(field) > 100_000 and field.count(b"\r\n ") == 10_000
    queue_id, ref = queue(relay, "hostile@sender.test", "bob@example.org",
                          with_message_id(field))
    wait_until(lambda: reasons_stored(sqlite_url, "accepted") == 1, what="the message")
    [story] = trace_json(relay, ref)["sessions"]
    [accepted] = [e for e in story["events"] if e["reason"] == "accepted"]
    stored = accepted["message_id"]
    assert 0 < len(stored) <= 255 and stored.isprintable()  # bounded, no escape, no newline
    assert stored.startswith("<<outer<inner>>\\x1bcafé-xxx")  # escaped, as it was sent
    whole = b" ".join(line.strip() for line in field.split(b"\r\n")).decode()
    for asked in (stored, f" {stored} ", whole):  # as shown, pasted with blanks, whole
        [found] = trace_json(relay, "--message-id", asked)["sessions"]
        assert found["session"] == ref and queue_id in found["queue_ids"]


def test_a_message_id_with_a_nul_is_refused_with_its_reference(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES, max_message_size=1_000_000)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as smtp:
        smtp.ehlo("sender.test")
        smtp.mail("hostile@sender.test")
        assert smtp.rcpt("bob@example.org")[0] == 250
        code, text = smtp.data(with_message_id(hostile_message_id(b"\x00")))
        assert smtp.noop()[0] == 250  # the session goes on
    reply, ref = split_ref(text)
    assert (code, reply) == (550, "5.6.11 Error: NUL in message data")
    wait_until(lambda: reasons_stored(sqlite_url, "protocol") == 1, what="the refusal")
    [story] = trace_json(relay, ref)["sessions"]
    assert [e["reason"] for e in story["events"]][-1] == "protocol"
