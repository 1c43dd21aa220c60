"""The SMTP front end against a running relay, on SQLite and on PostgreSQL."""

from __future__ import annotations

import importlib.metadata
import smtplib
import subprocess
import tomllib
from pathlib import Path

import pytest

from relay.delivery.spool import read_file
from relay.smtp.fast import WRITTEN_FOR
from tests.support import ROOT, unref, wait_until

ALIASES = "alice@example.org\nbob@example.org\nCarol@Example.NET\n"
MESSAGE = b"From: a@sender.test\r\nTo: alice@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"


def spooled(relay) -> list[Path]:  # type: ignore[no-untyped-def]
    queue = relay.config.parent / f"spool-{relay.config.stem}" / "queue"
    return sorted(queue.glob("*.msg")) if queue.exists() else []


@pytest.fixture
def relay(start_relay, store_url):  # type: ignore[no-untyped-def]
    return start_relay(store_url, aliases=ALIASES, extra_relay='recipient_delimiter = "+"')


def client(relay) -> smtplib.SMTP:  # type: ignore[no-untyped-def]
    smtp = smtplib.SMTP("127.0.0.1", relay.port, timeout=10)
    smtp.ehlo("client.test")
    return smtp


def test_ehlo_advertises_extensions(relay) -> None:  # type: ignore[no-untyped-def]
    with client(relay) as smtp:
        for ext in ("size", "8bitmime", "pipelining", "enhancedstatuscodes"):
            assert smtp.has_extn(ext), ext
        assert smtp.esmtp_features["size"] == "100000"
        assert not smtp.has_extn("auth")
        assert not smtp.has_extn("starttls")


def test_help_lists_the_commands_and_their_syntax(relay) -> None:  # type: ignore[no-untyped-def]
    """aiosmtpd's command table is bound lazily (relay/smtp/fast.py); HELP still sees all."""
    with client(relay) as smtp:
        listed = smtp.help().decode()
        assert listed.startswith("2.0.0 Supported commands: ")
        assert {"DATA", "EHLO", "HELO", "HELP", "MAIL", "NOOP", "QUIT", "RCPT", "RSET",
                "VRFY"} <= set(listed.split(": ", 1)[1].split())
        assert smtp.help("mail").decode().startswith("2.0.0 Syntax: MAIL FROM: <address>")
        assert smtp.help("ehlo").decode() == "2.0.0 Syntax: EHLO hostname"
        assert smtp.docmd("HELP", "BOGUS")[0] == 501


def test_relay_serves_with_the_fast_aiosmtpd_setup(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """relay/smtp/fast.py (a quarter of a dictionary attack's CPU) applies only to the
    aiosmtpd it was written for and the options it copies; otherwise the relay warns and
    serves with aiosmtpd's own set-up. This fails when it does."""
    relay = start_relay(sqlite_url, aliases=ALIASES)
    ready = relay.wait_for_log(r" ready .*")
    assert ready.group(0).endswith(" smtp_setup=fast"), ready.group(0)
    assert "fast set-up off" not in relay.log()


def test_aiosmtpd_is_pinned_to_the_version_the_overrides_were_written_for() -> None:
    """handler.py and fast.py use aiosmtpd's private members: any other release must be
    read against them first, so pyproject.toml allows only that one."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"aiosmtpd=={WRITTEN_FOR}" in project["dependencies"]
    assert importlib.metadata.version("aiosmtpd") == WRITTEN_FOR


def test_known_unknown_and_relayed_recipients(relay) -> None:  # type: ignore[no-untyped-def]
    with client(relay) as smtp:
        assert smtp.mail("sender@sender.test") == (250, b"2.1.0 Ok")
        assert smtp.rcpt("alice@example.org") == (250, b"2.1.5 Ok")
        code, msg = smtp.rcpt("nobody@example.org")
        assert (code, msg[:5]) == (550, b"5.1.1")
        code, msg = smtp.rcpt("victim@elsewhere.test")
        assert (code, unref(msg)) == (554, "5.7.1 Relay access denied")


def test_mixed_recipients_deliver_only_to_known(relay) -> None:  # type: ignore[no-untyped-def]
    with client(relay) as smtp:
        refused = smtp.sendmail("s@sender.test",
                                ["alice@example.org", "ghost@example.org", "bob@example.org",
                                 "x@gmail.test"], MESSAGE)
    assert refused["ghost@example.org"][0] == 550
    assert refused["x@gmail.test"][0] == 554
    assert set(refused) == {"ghost@example.org", "x@gmail.test"}
    [path] = spooled(relay)
    envelope, message = read_file(path)
    assert envelope.rcpt_tos == ["alice@example.org", "bob@example.org"]
    assert envelope.mail_from == "s@sender.test"
    assert message.endswith(MESSAGE)
    assert message.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby mx1.example.net")


def test_all_recipients_refused_means_no_data(relay) -> None:  # type: ignore[no-untyped-def]
    with client(relay) as smtp:
        smtp.mail("s@sender.test")
        assert smtp.rcpt("ghost@example.org")[0] == 550
        code, msg = smtp.docmd("DATA")
        assert (code, unref(msg)) == (554, "5.5.1 Error: no valid recipients")
    assert spooled(relay) == []


@pytest.mark.parametrize("address", ["ALICE@EXAMPLE.ORG", "alice@eXample.Org",
                                     "alice+news@example.org", "carol@example.net",
                                     "CAROL+x@EXAMPLE.NET", "anyone@catchall.test"])
def test_case_plus_and_catch_all_variants(relay, address: str) -> None:  # type: ignore[no-untyped-def]
    with client(relay) as smtp:
        smtp.mail("s@sender.test")
        assert smtp.rcpt(address) == (250, b"2.1.5 Ok")


def test_plus_addressing_is_off_without_delimiter(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES)
    with client(relay) as smtp:
        smtp.mail("s@sender.test")
        assert smtp.rcpt("alice+news@example.org")[0] == 550
        assert smtp.rcpt("alice@example.org")[0] == 250


def test_case_sensitive_local_parts(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra_relay='local_part_case = "sensitive"')
    with client(relay) as smtp:
        smtp.mail("s@sender.test")
        assert smtp.rcpt("Alice@EXAMPLE.org")[0] == 550
        assert smtp.rcpt("alice@EXAMPLE.org")[0] == 250
        assert smtp.rcpt("Carol@example.net")[0] == 250


def test_too_many_recipients(relay) -> None:  # type: ignore[no-untyped-def]
    with client(relay) as smtp:
        smtp.mail("s@sender.test")
        for i in range(5):
            assert smtp.rcpt(f"alice+{i}@example.org")[0] == 250
        code, msg = smtp.rcpt("bob@example.org")
        assert (code, unref(msg)) == (452, "4.5.3 Too many recipients")
        code, _ = smtp.data(MESSAGE)
        assert code == 250
    envelope, _ = read_file(spooled(relay)[0])
    assert len(envelope.rcpt_tos) == 5


def test_declared_size_over_limit(relay) -> None:  # type: ignore[no-untyped-def]
    with client(relay) as smtp:
        code, msg = smtp.mail("s@sender.test", ["SIZE=100001"])
        assert (code, msg[:5]) == (552, b"5.3.4")
        assert smtp.mail("s@sender.test", ["SIZE=99000"])[0] == 250


def test_oversized_message_refused_and_not_spooled(relay) -> None:  # type: ignore[no-untyped-def]
    big = MESSAGE + (b"x" * 70 + b"\r\n") * 2000
    with client(relay) as smtp:
        smtp.mail("s@sender.test")
        smtp.rcpt("alice@example.org")
        code, msg = smtp.data(big)
        assert (code, msg[:5]) == (552, b"5.3.4")
        # the session stays usable after the refusal
        assert smtp.sendmail("s@sender.test", ["alice@example.org"], MESSAGE) == {}
    assert len(spooled(relay)) == 1


def test_protocol_errors_carry_enhanced_codes(relay) -> None:  # type: ignore[no-untyped-def]
    with client(relay) as smtp:
        assert smtp.docmd("RCPT TO:<alice@example.org>") == (503,
                                                             b"5.5.1 Error: need MAIL command")
        assert smtp.docmd("FOO")[1].startswith(b"5.5.2")
        assert smtp.docmd("MAIL FROM:<>")[0] == 250  # null sender (bounces) is accepted
        assert smtp.docmd("AUTH PLAIN AGFhAGI=")[0] == 502
        assert smtp.docmd("VRFY alice")[0] == 252


def test_swaks_against_the_relay(relay) -> None:  # type: ignore[no-untyped-def]
    ok = subprocess.run(["swaks", "--server", f"127.0.0.1:{relay.port}", "--to",
                         "bob@example.org", "--from", "s@sender.test", "--helo", "swaks.test"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stdout
    assert "<-  250 2.0.0 Ok: queued as " in ok.stdout
    bad = subprocess.run(["swaks", "--server", f"127.0.0.1:{relay.port}", "--to",
                          "nobody@example.org", "--from", "s@sender.test"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
    assert "<** 550 5.1.1" in bad.stdout
    [path] = spooled(relay)
    assert read_file(path)[0].helo == "swaks.test"


def test_every_decision_is_an_event(relay, store_url) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from relay.store.database import make_engine
    from relay.store.tables import Event

    with client(relay) as smtp:
        smtp.sendmail("s@sender.test", ["alice@example.org", "ghost@example.org",
                                        "x@relay.test"], MESSAGE)
    engine = make_engine(store_url)

    def rows():  # type: ignore[no-untyped-def]
        with engine.connect() as conn:
            found = conn.execute(select(Event.stage, Event.action, Event.reason,
                                        Event.recipient, Event.node, Event.helo, Event.sender,
                                        Event.client)).all()
        return found if len(found) >= 5 else None

    found = wait_until(rows, what="five events")
    reasons = {(r.stage, r.action, r.reason, r.recipient) for r in found}
    assert ("rcpt", "reject", "unknown_rcpt", "ghost@example.org") in reasons
    assert ("rcpt", "reject", "relay_denied", "x@relay.test") in reasons
    assert ("rcpt", "accept", "known_rcpt", "alice@example.org") in reasons
    assert ("data", "accept", "accepted", "alice@example.org") in reasons
    assert ("connect", "accept", "connect", "") in reasons
    assert {(r.node, r.client) for r in found} == {("relay", "127.0.0.1")}
    assert all(r.helo == "client.test" for r in found if r.stage != "connect")
    assert all(r.sender == "s@sender.test" for r in found if r.stage in ("rcpt", "data"))
    engine.dispose()
    # one greppable line per decision
    relay.wait_for_log(r"decision .*stage=rcpt action=reject reason=unknown_rcpt code=550 .*"
                       r"rcpt=ghost@example.org")
