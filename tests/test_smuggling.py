"""SMTP smuggling (CVE-2023-51764/-51765/-51766, aiosmtpd CVE-2024-27305) and STARTTLS
command injection, against a running relay over raw sockets."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from relay.spool import read_file
from tests.hardening_support import ALIASES, Raw, events, spooled

# End-of-data look-alikes: SEC Consult's (Dec 2023) and smtpsmug's (Hanno Böck) families.
FAKE_ENDS = [
    b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n", b"\n.\r", b"\r.\n", b"\r.\r",
    b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\n\n.\n\n", b"\r\r\n.\r\r\n",
]
SMUGGLED = (b"MAIL FROM:<admin@bank.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
            b"From: admin@bank.test\r\nSubject: SMUGGLED\r\n\r\nsmuggled body\r\n")


@pytest.fixture(params=["normalize", "reject"])
def relay(request, start_relay, store_url):  # type: ignore[no-untyped-def]
    """Both modes of `[limits] bare_newline` (Postfix's smtpd_forbid_bare_newline)."""
    relay = start_relay(store_url, aliases=ALIASES,
                        extra=f'[limits]\nbare_newline = "{request.param}"\n')
    relay.bare_newline = request.param
    return relay


def refused(relay, fake: bytes) -> bool:  # type: ignore[no-untyped-def]
    """Whether the message holding `fake` is refused whole (550 5.6.11): always in reject
    mode; in normalize mode only for a NUL (a bare CR or LF is read as a line ending, so
    the smuggled commands are text of the one message, as Postfix 3.9 has it)."""
    return relay.bare_newline == "reject" or b"\0" in fake


def legit(n: int) -> bytes:
    return f"From: a@sender.test\r\nSubject: legit {n}\r\n\r\nhello {n}\r\n".encode()


def envelope_head() -> bytes:
    return b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"


def assert_nothing_smuggled(relay) -> list[bytes]:  # type: ignore[no-untyped-def]
    """No message of the smuggler's envelope; in normalize mode its text may be body text
    of the legit message, but with CRLF line ends only: once delivery dot-stuffs it,
    nothing in it can end the next hop's DATA."""
    messages = []
    for path in spooled(relay):
        envelope, message = read_file(path)
        assert envelope.mail_from != "admin@bank.test"
        assert "bob@example.org" not in envelope.rcpt_tos
        if relay.bare_newline == "reject":
            assert b"SMUGGLED" not in message
        assert message.count(b"\r") == message.count(b"\n") == message.count(b"\r\n")
        messages.append(message)
    return messages


@pytest.mark.parametrize("fake", FAKE_ENDS, ids=[repr(f)[2:-1] for f in FAKE_ENDS])
def test_each_smuggling_payload_in_one_pipelined_write(relay, fake: bytes) -> None:  # type: ignore[no-untyped-def]
    with Raw(relay.port) as raw:
        raw.send(b"EHLO smuggler.test\r\n" + envelope_head() + legit(1) + fake + SMUGGLED
                 + b".\r\nQUIT\r\n")
        assert raw.reply().startswith("250 ")  # EHLO
        assert raw.reply() == "250 2.1.0 Ok"
        assert raw.reply() == "250 2.1.5 Ok"
        assert raw.reply().startswith("354 ")
        # one message, refused whole (or, normalized, queued whole)
        assert raw.reply().startswith("550 5.6.11 " if refused(relay, fake) else "250 2.0.0 ")
        assert raw.reply().startswith("221")  # and the stream is still in step
    assert len(assert_nothing_smuggled(relay)) == (0 if refused(relay, fake) else 1)


def test_all_payloads_in_one_write_leave_at_most_the_legit_message(relay, store_url) -> None:  # type: ignore[no-untyped-def]
    """Every family back to back in one write, then a proper message: only that one is
    queued, and the refusal is recorded as a protocol event."""
    payload = b"EHLO smuggler.test\r\n"
    for n, fake in enumerate(FAKE_ENDS):
        payload += envelope_head() + legit(n) + fake + SMUGGLED + b".\r\n"
    payload += envelope_head() + legit(99) + b".\r\nQUIT\r\n"
    with Raw(relay.port) as raw:
        raw.send(payload)
        assert raw.reply().startswith("250 ")
        for fake in FAKE_ENDS:
            assert raw.reply() == "250 2.1.0 Ok"
            assert raw.reply() == "250 2.1.5 Ok"
            assert raw.reply().startswith("354 ")
            assert raw.reply().startswith("550 5.6.11 " if refused(relay, fake) else "250 ")
        assert [raw.reply()[:3] for _ in range(4)] == ["250", "250", "354", "250"]
        assert raw.reply().startswith("221")
    messages = assert_nothing_smuggled(relay)
    kept = [fake for fake in FAKE_ENDS if not refused(relay, fake)]
    assert len(messages) == len(kept) + 1
    assert any(m.endswith(legit(99)) for m in messages)
    attempts = len(FAKE_ENDS) - len(kept)
    rows = events(store_url, lambda e: e.stage == "data" and e.reason == "protocol",
                  at_least=attempts, what="a protocol event per refused smuggling attempt")
    assert {r.code for r in rows} == {550} and len(rows) == attempts


def test_real_pipelining_after_the_real_end_still_works(relay) -> None:  # type: ignore[no-untyped-def]
    with Raw(relay.port) as raw:
        raw.send(b"EHLO ok.test\r\n" + envelope_head() + legit(1) + b".\r\n"
                 + envelope_head() + b"..leading dot\r\n" + legit(2) + b".\r\nQUIT\r\n")
        replies = [raw.reply()[:3] for _ in range(9)]
        assert replies == ["250", "250", "250", "354", "250", "250", "250", "354", "250"]
    messages = sorted(read_file(p)[1] for p in spooled(relay))
    assert len(messages) == 2
    assert any(m.endswith(b".leading dot\r\n" + legit(2)) for m in messages)


@pytest.mark.parametrize("line", [b"EHLO bare.test\n", b"NOOP\rMAIL FROM:<a@b.test>\r\n",
                                  b"MAIL FROM:<a@b.test>\n\r\n"])
def test_bare_newline_in_a_command_is_refused_and_the_connection_closed(relay, line: bytes) -> None:  # type: ignore[no-untyped-def]
    with Raw(relay.port) as raw:
        raw.send(line + b"RSET\r\n")
        assert raw.reply().startswith("550 5.5.2 Error: bare <CR> or <LF>")
        assert raw.closed()


def test_commands_pipelined_after_starttls_are_discarded(start_relay, sqlite_url,
                                                         tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx1.example.net", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra_relay='tls = { cert = "cert.pem", key = "key.pem" }')
    with Raw(relay.port) as raw:
        assert "STARTTLS" in "\n".join(raw.send(b"EHLO inject.test\r\n") or raw.lines())
        # the injection: plaintext commands in the same packet as STARTTLS
        raw.send(b"STARTTLS\r\nMAIL FROM:<evil@inject.test>\r\nRCPT TO:<alice@example.org>\r\n"
                 b"NOOP\r\n")
        assert raw.reply().startswith("220 ")
        assert not raw.buf
        tls = ssl._create_unverified_context().wrap_socket(raw.sock,
                                                           server_hostname="mx1.example.net")
        raw.sock = tls
        # the first reply inside TLS answers our EHLO: nothing injected was answered
        lines = (raw.send(b"EHLO inject.test\r\n") or raw.lines())
        assert lines[0].startswith("250-mx1.example.net")
        assert raw.cmd("RCPT TO:<alice@example.org>").startswith("503 ")  # no MAIL survived
        assert raw.cmd("MAIL FROM:<good@sender.test>").startswith("250 ")
        assert raw.cmd("RCPT TO:<bob@example.org>").startswith("250 ")
        raw.cmd("QUIT")
    url = f"sqlite:///{tmp_path}/floodgate.db"
    rows = events(url, lambda e: e.recipient == "bob@example.org", what="the TLS session's RCPT")
    assert rows[0].sender == "good@sender.test"
    assert not events(url, at_least=0, where=lambda e: e.sender == "evil@inject.test")
