"""SMTP smuggling (CVE-2023-51764/-51765/-51766, aiosmtpd CVE-2024-27305) and STARTTLS
command injection, against a running relay over raw sockets."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from relay.delivery.spool import read_file
from tests.hardening_support import ALIASES, Raw, events, spooled
from tests.support import wait_until

# End-of-data look-alikes: SEC Consult's (Dec 2023) and smtpsmug's (Hanno Böck) families.
FAKE_ENDS = [
    b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n", b"\n.\r", b"\r.\n", b"\r.\r",
    b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\n\n.\n\n", b"\r\r\n.\r\r\n",
]
SMUGGLED = (b"MAIL FROM:<admin@bank.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
            b"From: admin@bank.test\r\nSubject: SMUGGLED\r\n\r\nsmuggled body\r\n")


MODES = ["normalize", "reject"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """[limits] bare_newline: every test here holds in both modes."""
    return str(request.param)


@pytest.fixture
def relay(start_relay, store_url, mode: str):  # type: ignore[no-untyped-def]
    return start_relay(store_url, aliases=ALIASES, extra=f'[limits]\nbare_newline = "{mode}"')


def refused(fake: bytes, mode: str) -> bool:
    """Reject mode refuses every look-alike; normalize mode only those with a NUL (a bare
    CR or LF is a line ending there, and the message is one message)."""
    return mode == "reject" or b"\0" in fake


def legit(n: int) -> bytes:
    return f"From: a@sender.test\r\nSubject: legit {n}\r\n\r\nhello {n}\r\n".encode()


def envelope_head() -> bytes:
    return b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"


def assert_nothing_smuggled(relay) -> list[bytes]:  # type: ignore[no-untyped-def]
    """No second message (its envelope) was queued, and what is queued has CRLF line
    endings only, so once dot-stuffed nothing in it can end the next hop's DATA."""
    messages = []
    for path in spooled(relay):
        envelope, message = read_file(path)
        assert envelope.mail_from != "admin@bank.test"
        assert "bob@example.org" not in envelope.rcpt_tos
        crlf = message.count(b"\r\n")
        assert message.count(b"\r") == crlf == message.count(b"\n")
        assert b"\0" not in message
        if b"SMUGGLED" in message:  # normalize mode: text of the one message, not a message
            assert b"\r\n.\r\n" not in message
            assert envelope.mail_from == "s@sender.test"
        messages.append(message)
    return messages


@pytest.mark.parametrize("fake", FAKE_ENDS, ids=[repr(f)[2:-1] for f in FAKE_ENDS])
def test_each_smuggling_payload_in_one_pipelined_write(relay, mode: str, fake: bytes) -> None:  # type: ignore[no-untyped-def]
    with Raw(relay.port) as raw:
        raw.send(b"EHLO smuggler.test\r\n" + envelope_head() + legit(1) + fake + SMUGGLED
                 + b".\r\nQUIT\r\n")
        assert raw.reply().startswith("250 ")  # EHLO
        assert raw.reply() == "250 2.1.0 Ok"
        assert raw.reply() == "250 2.1.5 Ok"
        assert raw.reply().startswith("354 ")
        if refused(fake, mode):
            assert raw.reply().startswith("550 5.6.11 ")  # one message, refused whole
        else:
            assert raw.reply().startswith("250 2.0.0 Ok: queued as ")  # one message
        assert raw.reply().startswith("221")  # and the stream is still in step
    if refused(fake, mode):
        assert spooled(relay) == []
    else:
        [message] = assert_nothing_smuggled(relay)
        assert legit(1)[:-2] in message and message.endswith(SMUGGLED)


def test_all_payloads_in_one_write_leave_at_most_the_legit_message(  # type: ignore[no-untyped-def]
        relay, store_url, mode: str) -> None:
    """Every family back to back in one write, then a proper message: only that one (and in
    normalize mode the ones without a NUL, each whole) is queued, and each refusal is
    recorded as a protocol event."""
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
            assert raw.reply().startswith("550 5.6.11 " if refused(fake, mode) else "250 2.0.0")
        assert [raw.reply()[:3] for _ in range(4)] == ["250", "250", "354", "250"]
        assert raw.reply().startswith("221")
    messages = assert_nothing_smuggled(relay)
    kept = [f for f in FAKE_ENDS if not refused(f, mode)]
    assert len(messages) == 1 + len(kept)
    assert sum(m.endswith(legit(99)) for m in messages) == 1
    assert sum(m.endswith(SMUGGLED) for m in messages) == len(kept)
    n = len(FAKE_ENDS) - len(kept)
    rows = events(store_url, lambda e: e.stage == "data" and e.reason == "protocol",
                  at_least=n, what="a protocol event per refused smuggling attempt")
    assert {r.code for r in rows} == {550}
    assert len(rows) == n


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


def test_normalized_messages_reach_the_next_hop_as_one_message_each(  # type: ignore[no-untyped-def]
        start_relay, sqlite_url) -> None:
    """normalize mode, through delivery to a real SMTP server: each look-alike (but a
    NUL's) arrives inside its one message, never as a message of its own."""
    from tests.sink import Sink
    from tests.test_delivery import start

    kept = [f for f in FAKE_ENDS if not refused(f, "normalize")]
    sink = Sink().up()
    try:
        relay = start(start_relay, sqlite_url, sink.hop)
        with Raw(relay.port) as raw:
            raw.send(b"EHLO smuggler.test\r\n")
            raw.reply()
            for n, fake in enumerate(kept):
                raw.send(b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<u%d@dest.test>\r\nDATA\r\n" % n
                         + legit(n) + fake + SMUGGLED + b".\r\n")
                assert [raw.reply()[:3] for _ in range(4)] == ["250", "250", "354", "250"]
        got = wait_until(lambda: len(sink.messages()) >= len(kept) and sink.messages(), 60,
                         "deliveries")
        assert len(got) == len(kept)  # type: ignore[arg-type]
        for item in got:  # type: ignore[attr-defined]
            assert item.mail_from == "s@sender.test"
            assert item.rcpt_tos[0].endswith("@dest.test")
            assert item.data.endswith(SMUGGLED)  # the smuggled lines are body text
            assert item.data.count(b"\r") == item.data.count(b"\n") == item.data.count(b"\r\n")
        assert sorted(i.rcpt_tos[0] for i in got) == sorted(  # type: ignore[attr-defined]
            f"u{n}@dest.test" for n in range(len(kept)))
    finally:
        sink.down()
