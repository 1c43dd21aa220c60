"""Hostile clients against a running relay: open-relay tricks, RFC 5321 limits, replies in
one write, faults in hooks, the spool and the store, timeouts, and injected text."""

from __future__ import annotations

import select
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from relay.delivery.spool import read_file
from tests.hardening_support import ALIASES, MESSAGE, Raw, events, spooled, start_faulty
from tests.support import ROOT, RelayProcess

IDN = '\n[domains."bücher.test"]\nnext_hop = "127.0.0.1:2600"\ncatch_all = true\n'
LOOKALIKE = "exämple.org".encode("idna").decode()


@pytest.fixture
def relay(start_relay, sqlite_url):  # type: ignore[no-untyped-def]
    return start_relay(sqlite_url, aliases=ALIASES, extra=IDN)


@pytest.fixture
def faulty(tmp_path: Path, sqlite_url):  # type: ignore[no-untyped-def]
    started: list[RelayProcess] = []

    def start(**config: object) -> RelayProcess:
        return start_faulty(tmp_path, sqlite_url, started, **config)

    yield start
    for r in started:
        r.stop()


def rcpt_reply(raw: Raw, address: str) -> str:
    raw.cmd("RSET")
    assert raw.cmd("MAIL FROM:<s@sender.test>").startswith("250 ")
    return raw.cmd(f"RCPT TO:{address}")


# -- open relay -------------------------------------------------------------------------

REFUSED = [
    "<victim%elsewhere.test@example.org>",        # percent hack
    "<victim%elsewhere.test@catchall.test>",      # ... even where every local part exists
    "<elsewhere.test!victim@example.org>",        # bang path
    "<elsewhere.test!victim@catchall.test>",
    '<"victim@elsewhere.test"@example.org>',      # quoted local part holding @
    '<"victim@elsewhere.test"@catchall.test>',
    "<victim@elsewhere.test@example.org>",        # double @
    "<alice@@example.org>",
    "<@example.org:victim@elsewhere.test>",       # source route to a foreign mailbox
    "<alice@[127.0.0.1]>",                        # IP literals
    "<alice@[IPv6:::1]>",
    "<alice@example.org..>",                      # trailing dots
    "<alice@.example.org>",
    f"<alice@{LOOKALIKE}>",                       # punycode look-alike of example.org
    "<alice@xn--bcher-kva.test.elsewhere.test>",
    "<alice@example.org.elsewhere.test>",
    "<alice>",
    "<victim@elsewhere.test>",
]
ACCEPTED = [
    "<ALICE@EXAMPLE.ORG>",                        # mixed case
    "<alice@Example.Org>",
    '<"alice"@example.org>',                      # quoting that changes nothing
    "<@relay.test,@other.test:alice@example.org>",  # source route ignored (RFC 5321 C)
    "<anyone@xn--bcher-kva.test>",                # A-label of a domain configured as U-label
    "<anyone@XN--BCHER-KVA.TEST>",
]


def test_open_relay_tricks_are_refused(relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    with Raw(relay.port) as raw:
        raw.cmd("EHLO relay-test.test")
        for address in REFUSED:
            reply = rcpt_reply(raw, address)
            assert reply[0] == "5", (address, reply)
        for address in ACCEPTED:
            assert rcpt_reply(raw, address).startswith("250 "), address
        # a U-label needs SMTPUTF8, which this MX does not offer: refused, never relayed
        raw.send("RSET\r\nMAIL FROM:<s@sender.test>\r\nRCPT TO:<a@bücher.test>\r\n".encode())
        assert [raw.reply()[:1] for _ in range(3)] == ["2", "2", "5"]
    rows = events(sqlite_url, lambda e: e.stage in ("rcpt", "command") and e.action == "reject",
                  at_least=len(REFUSED), what="an event per refused trick")
    assert {r.reason for r in rows} <= {"relay_denied", "protocol", "unknown_rcpt"}
    assert not [r for r in rows if "%" in r.recipient and r.reason != "relay_denied"]


# -- RFC 5321 limits --------------------------------------------------------------------

def test_command_line_limit_is_512_with_crlf(relay) -> None:  # type: ignore[no-untyped-def]
    with Raw(relay.port) as raw:
        raw.cmd("EHLO limits.test")
        assert raw.cmd("NOOP " + "x" * 505).startswith("250")  # 510 + CRLF = 512
        assert raw.cmd("NOOP " + "x" * 506) == "500 5.5.2 Command line too long"
        assert raw.cmd("NOOP " + "x" * 5000) == "500 5.5.2 Command line too long"
        # MAIL may grow by 26 for SIZE (RFC 1870), once, however many EHLOs
        for _ in range(5):
            raw.cmd("EHLO limits.test")
        long_from = "MAIL FROM:<" + "s" * 60 + "@" + "d" * 300 + ".test>"
        assert raw.cmd(long_from)[:3] in ("500", "501")
        assert raw.cmd("MAIL FROM:<s@sender.test> SIZE=1000").startswith("250")


def test_address_limits(relay) -> None:  # type: ignore[no-untyped-def]
    label = "d" * 60
    with Raw(relay.port) as raw:
        raw.cmd("EHLO limits.test")
        assert rcpt_reply(raw, f"<{'a' * 65}@example.org>").startswith("501 5.1.3 Local part")
        assert rcpt_reply(raw, f"<{'a' * 64}@catchall.test>").startswith("250")
        long_domain = ".".join([label] * 4) + ".test"  # 249 octets
        assert rcpt_reply(raw, f"<a@{long_domain}>")[0] == "5"
        path = f"<{'a' * 10}@{'.'.join([label] * 5)}.test>"  # over 256
        assert rcpt_reply(raw, path).startswith("501 5.1.3 Path too long")
        raw.cmd("RSET")
        assert raw.cmd(f"MAIL FROM:<{'s' * 100}@srs.sender.test>").startswith("250")  # SRS
        raw.cmd("RSET")
        assert raw.cmd(f"MAIL FROM:{path}").startswith("501 5.1.7 Path too long")


def test_text_line_limit_is_1000_with_crlf(relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    with Raw(relay.port) as raw:
        # (line on the wire, accepted): 998 octets of text; 998 behind a transparency dot
        for wire, ok in [(b"x" * 998, True), (b".." + b"x" * 997, True), (b"x" * 999, False),
                         (b"y" * 100_000, False)]:
            raw.cmd("RSET")
            raw.send(b"EHLO t.test\r\nMAIL FROM:<s@sender.test>\r\nRCPT TO:<alice@example.org>"
                     b"\r\nDATA\r\nSubject: long\r\n\r\n" + wire + b"\r\nend\r\n.\r\n")
            assert [raw.reply()[:3] for _ in range(4)] == ["250", "250", "250", "354"]
            reply = raw.reply()
            assert reply.startswith("250 ") if ok else reply.startswith("500 5.5.2 Line too long")
    assert len(spooled(relay)) == 2
    assert any(read_file(p)[1].endswith(b"\r\n." + b"x" * 997 + b"\r\nend\r\n")
               for p in spooled(relay))
    events(sqlite_url, lambda e: e.stage == "data" and e.reason == "protocol", at_least=2)


def test_multiline_replies_arrive_in_one_write(relay) -> None:  # type: ignore[no-untyped-def]
    """nmap's smtp scripts read one recv per command: the whole reply must be in it."""
    with Raw(relay.port) as raw:
        for command in (b"EHLO one.test\r\n", b"HELO one.test\r\n", b"HELP\r\n", b"NOOP\r\n"):
            raw.send(command)
            first = raw.sock.recv(65536)
            lines = first.split(b"\r\n")
            assert first.endswith(b"\r\n") and lines[-2][3:4] == b" ", (command, first)
        raw.send(b"EHLO two.test\r\nMAIL FROM:<s@sender.test>\r\n")
        ehlo = raw.lines()
        assert len(ehlo) > 3 and ehlo[-1].startswith("250 ")
        assert raw.reply() == "250 2.1.0 Ok"


# -- faults -----------------------------------------------------------------------------

def test_exception_in_a_hook_is_451_and_the_session_goes_on(faulty, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = faulty()
    with Raw(relay.port) as raw:
        assert raw.cmd("EHLO boom.test") == "451 4.3.0 Internal error, try again later"
        assert raw.cmd("EHLO fine.test").startswith("250 ")
        assert raw.cmd("MAIL FROM:<s@sender.test>").startswith("250")
        assert raw.cmd("RCPT TO:<boom@example.org>").startswith("451 4.3.0")
        # the transaction was dropped with the 451; a new one works
        assert raw.cmd("MAIL FROM:<s@sender.test>").startswith("250")
        assert raw.cmd("RCPT TO:<alice@example.org>").startswith("250")
        assert raw.cmd("DATA").startswith("354")
        raw.send(b"X-Fault: data-hook\r\n\r\nbody\r\n.\r\n")
        assert raw.reply().startswith("451 4.3.0")
        assert raw.cmd("MAIL FROM:<s@sender.test>").startswith("250")
        assert raw.cmd("RCPT TO:<alice@example.org>").startswith("250")
        assert raw.cmd("DATA").startswith("354")
        raw.send(MESSAGE + b".\r\n")
        assert raw.reply().startswith("250 2.0.0 Ok: queued as")
    log = relay.log()
    assert "Traceback" in log and "injected fault in handle_RCPT" in log
    assert "injected fault in handle_DATA" in log
    assert len(spooled(relay)) == 1


@pytest.mark.parametrize(("marker", "reply"), [(b"eio", "451 4.3.0"), (b"enospc", "452 4.3.1")])
def test_spool_write_failure_is_never_250(faulty, marker: bytes, reply: str) -> None:  # type: ignore[no-untyped-def]
    relay = faulty()
    with Raw(relay.port) as raw:
        raw.cmd("EHLO disk.test")
        raw.send(b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
                 b"X-Fault: " + marker + b"\r\n\r\nbody\r\n.\r\n")
        assert [raw.reply()[:3] for _ in range(3)] == ["250", "250", "354"]
        assert raw.reply().startswith(reply)
    assert spooled(relay) == []


def test_unwritable_spool_is_451(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES)
    tmp = relay.config.parent / f"spool-{relay.config.stem}" / "tmp"
    tmp.rmdir()
    tmp.write_text("not a directory")  # works as root too, unlike chmod
    try:
        with Raw(relay.port) as raw:
            raw.cmd("EHLO disk.test")
            raw.send(b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
                     + MESSAGE + b".\r\n")
            assert [raw.reply()[:3] for _ in range(3)] == ["250", "250", "354"]
            assert raw.reply().startswith("451 4.3.0")
    finally:
        tmp.unlink()
        tmp.mkdir()
    assert spooled(relay) == []


def test_disk_nearly_full_is_452_at_mail(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra_delivery='enabled = false\nmin_free_disk = "1000000TB"')
    with Raw(relay.port) as raw:
        raw.cmd("EHLO disk.test")
        assert raw.cmd("MAIL FROM:<s@sender.test>").startswith("452 4.3.1")


def test_sqlite_locked_keeps_mail_flowing(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES)
    db = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=1)
    db.execute("BEGIN EXCLUSIVE")
    try:
        for _ in range(2):
            with Raw(relay.port) as raw:
                raw.cmd("EHLO locked.test")
                raw.send(b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<alice@example.org>\r\n"
                         b"DATA\r\n" + MESSAGE + b".\r\n")
                assert [raw.reply()[:3] for _ in range(4)] == ["250", "250", "354", "250"]
    finally:
        db.rollback()
        db.close()
    assert len(spooled(relay)) == 2
    events(sqlite_url, lambda e: e.helo == "locked.test" and e.reason == "accepted",
           at_least=2, what="events written once the lock is gone")


# -- timeouts ---------------------------------------------------------------------------

def test_idle_client_gets_421_and_is_closed(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, extra_relay='idle_timeout = "1s"')
    with Raw(relay.port) as raw:
        assert raw.reply().startswith("421 4.4.2 ")
        assert raw.closed()


def test_slowloris_cannot_hold_a_session(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """One byte at a time, a complete NOOP well inside every idle timeout: the session
    deadline still ends it."""
    relay = start_relay(sqlite_url, extra_relay='idle_timeout = "30s"',
                        extra='[limits]\nsession_timeout = "2s"\n')
    with Raw(relay.port) as raw:
        trickle = b"NOOP\r\n" * 1000
        got = b""
        for byte in trickle:
            try:
                raw.sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            ready, _, _ = select.select([raw.sock], [], [], 0.05)  # the trickle's pace
            if ready:
                chunk = raw.sock.recv(65536)
                got += chunk
                if not chunk or b"421" in got:
                    break
        assert b"421 4.4.2 mx1.example.net Error: session too long" in got
        assert raw.closed()


def test_data_trickle_is_cut_at_the_data_deadline(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES, extra='[limits]\ndata_timeout = "1s"\n')
    with Raw(relay.port) as raw:
        raw.cmd("EHLO slow.test")
        raw.send(b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
        assert [raw.reply()[:3] for _ in range(3)] == ["250", "250", "354"]
        raw.send(b"Subject: slow\r\n\r\nstarted but never finished\r\n")
        assert raw.reply().startswith("421 4.4.2")
        assert raw.closed()
    assert spooled(relay) == []


def test_slow_scanner_answers_inside_the_reply_deadline(faulty) -> None:  # type: ignore[no-untyped-def]
    relay = faulty(extra='[limits]\nreply_timeout = "1s"\n')
    with Raw(relay.port) as raw:
        raw.cmd("EHLO slow.test")
        raw.send(b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
                 b"X-Fault: slow-scan\r\n\r\nbody\r\n.\r\n")
        assert [raw.reply()[:3] for _ in range(3)] == ["250", "250", "354"]
        assert raw.reply().startswith("451 4.3.0 Took too long")
        assert raw.cmd("NOOP").startswith("250")  # the session is still usable
    assert spooled(relay) == []


# -- injection --------------------------------------------------------------------------

HOSTILE_HELO = "x'); DROP TABLE events;--\x1b[31mRED\x1b[0m\x00\x07\"quoted\" [/] [bold]"
HOSTILE_LOCAL = '"a\'; DELETE FROM events;--\x1b]0;pwned\x07[/]"'
PRINTABLE_LOCAL = '"a\'; DELETE FROM events;--[/]"'


def test_hostile_text_breaks_neither_store_nor_log_nor_report(start_relay, store_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(store_url, aliases=ALIASES)
    with Raw(relay.port) as raw:
        assert raw.cmd(f"EHLO {HOSTILE_HELO}").startswith("250")
        # control characters in an address: refused, and recorded escaped
        assert raw.cmd(f"MAIL FROM:<{HOSTILE_LOCAL}@evil.test>").startswith("501 5.1.7")
        assert raw.cmd(f"MAIL FROM:<{PRINTABLE_LOCAL}@evil.test>").startswith("250")
        assert raw.cmd(f"RCPT TO:<{HOSTILE_LOCAL}@example.org>")[0] == "5"
        assert raw.cmd("RCPT TO:<alice@example.org>").startswith("250")
        raw.send(b"DATA\r\n" + MESSAGE + b".\r\n")
        assert raw.reply().startswith("354")
        assert raw.reply().startswith("250")
    rows = events(store_url, lambda e: e.reason == "accepted", what="the accepted message")
    assert "\x1b" not in rows[0].helo and "\x00" not in rows[0].helo
    assert "\\x1b[31mRED" in rows[0].helo and "DROP TABLE events" in rows[0].helo
    assert "DELETE FROM events" in rows[0].sender
    [refused] = events(store_url, lambda e: e.stage == "mail" and e.code == 501)
    assert "\\x1b]0;pwned\\x07" in refused.detail and "\x1b" not in refused.detail
    log = relay.log()
    assert "\x1b" not in log and "\x00" not in log and "\x07" not in log
    assert [line for line in log.splitlines() if "reason=accepted" in line]
    shown = subprocess.run([sys.executable, "-m", "relay.cli", "-c", str(relay.config), "hosts",
                            "show", "127.0.0.1"], capture_output=True, text=True, cwd=ROOT,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b]0;" not in shown.stdout and "Traceback" not in shown.stderr
    [path] = spooled(relay)
    assert b"\x1b" not in read_file(path)[1].split(b"\r\n", 1)[0]  # the Received line


def test_nul_and_controls_in_helo_reach_postgresql(start_relay, postgres) -> None:  # type: ignore[no-untyped-def]
    url = postgres.create_database()
    relay = start_relay(url, aliases=ALIASES)
    with Raw(relay.port) as raw:
        raw.send(b"EHLO nul\x00helo\x1b[2J.test\r\n")
        assert raw.reply().startswith("250")
        assert raw.cmd("MAIL FROM:<s@sender.test>").startswith("250")
        assert raw.cmd("RCPT TO:<ghost@example.org>").startswith("550")
    [row] = events(url, lambda e: e.reason == "unknown_rcpt")
    assert row.helo == "nul\\x00helo\\x1b[2J.test"


def test_socket_closes_cleanly_for_rude_clients(relay) -> None:  # type: ignore[no-untyped-def]
    """A client that resets mid-DATA leaves nothing behind and the relay serving."""
    raw = Raw(relay.port)
    raw.cmd("EHLO rude.test")
    raw.send(b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
             b"Subject: half\r\n")
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw.close()
    with Raw(relay.port) as again:
        assert again.cmd("NOOP").startswith("250")
    assert spooled(relay) == []
