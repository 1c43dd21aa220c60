"""`floodgate milter` over its socket against a hostile client: what one connection may make
the milter keep is bounded by the message size limit, whatever it sends and in what order."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.smtp import milter
from relay.smtp.milter import MAX_CONNECTIONS, packet
from tests.support import RelayProcess, free_port
from tests.test_smtp import ALIASES

MAX_SIZE = 100_000  # the tests' [relay] max_message_size


def start_milter(start_relay, url: str, extra: str = "") -> RelayProcess:  # type: ignore[no-untyped-def]
    relay = start_relay(url, aliases=ALIASES, extra=extra)
    port = free_port()
    return RelayProcess(relay.config, port, log_name="milter",
                        command=("milter", "--listen", f"127.0.0.1:{port}")).start()


@pytest.fixture
def milter_process(start_relay, sqlite_url) -> Iterator[RelayProcess]:  # type: ignore[no-untyped-def]
    proc = start_milter(start_relay, sqlite_url)
    yield proc
    proc.stop()


class Conversation:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.reader = self.sock.makefile("rb")

    def send(self, command: bytes, data: bytes = b"") -> tuple[bytes, bytes]:
        """Send one packet and read its one reply."""
        self.sock.sendall(packet(command, data))
        (n,) = struct.unpack("!I", self.reader.read(4))
        body = self.reader.read(n)
        return body[:1], body[1:]


def rss(proc: RelayProcess) -> int:
    assert proc.proc is not None
    status = Path(f"/proc/{proc.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmRSS:"))) * 1024


def test_a_flood_of_recipients_and_headers_keeps_memory_bounded(milter_process) -> None:  # type: ignore[no-untyped-def]
    """Long recipients (1,000 are kept) and, once the message is over the size limit, header
    fields with ever new names: none of it piles up in the milter."""
    c = Conversation(milter_process.port)
    assert c.send(milter.OPTNEG, struct.pack("!III", 6, 0x1FF, 0))[0] == milter.OPTNEG
    assert c.send(milter.CONNECT, b"client.test\x004\x00\x19192.0.2.7\0")[0] == milter.CONTINUE
    assert c.send(milter.MAIL, b"<s@sender.test>\0")[0] == milter.CONTINUE
    before = rss(milter_process)
    long = 200_000
    for i in range(500):
        rcpt = b"<" + b"%d" % i + b"x" * long + b"@example.org>\0"
        assert c.send(milter.RCPT, rcpt)[0] == milter.CONTINUE
    assert c.send(milter.HEADER, b"Subject\0" + b"y" * (MAX_SIZE + 1) + b"\0")[0] == \
        milter.CONTINUE  # over the limit: the message will be refused
    for i in range(500):
        name = b"X-Spam-%d" % i + b"n" * long
        assert c.send(milter.HEADER, name + b"\0v\0")[0] == milter.CONTINUE
    grown = rss(milter_process) - before
    assert grown < 50_000_000, f"{grown} bytes kept for one connection"
    command, data = c.send(milter.BODYEOB)
    assert command == milter.REPLYCODE and data.startswith(b"552 5.3.4 ")


def test_a_client_holding_every_connection_cannot_lock_postfix_out(milter_process) -> None:  # type: ignore[no-untyped-def]
    """The cap's worth of idle connections, half of them inside a packet: a new connection
    (Postfix's, for its next SMTP session) closes the one that waited longest and is
    served."""
    held = []
    try:
        for i in range(MAX_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", milter_process.port), timeout=10)
            if i % 2:
                s.sendall(b"\0\0")  # half a packet length, and never the rest
            held.append(s)
        c = Conversation(milter_process.port)
        assert c.send(milter.OPTNEG, struct.pack("!III", 6, 0x1FF, 0))[0] == milter.OPTNEG
        milter_process.wait_for_log(r"milter connection closed .*reason=\"waited longest "
                                    rf"of {MAX_CONNECTIONS} connections, closed for a new one\"")
        assert held[0].recv(100) == b""
    finally:
        for s in held:
            s.close()
    assert "milter connection refused" not in milter_process.log()


def test_forged_authentication_results_under_our_id_are_deleted(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """[auth] on: the milter does not authenticate, but a sender's Authentication-Results
    naming our authserv-id (the relay's hostname, however spelled) is deleted, as a forged
    X-Spam-* is; another server's stays."""
    proc = start_milter(start_relay, sqlite_url, extra='[auth]\nenabled = true\n'
                        'nameserver = "127.0.0.1:9"\n')
    try:
        c = Conversation(proc.port)
        assert c.send(milter.OPTNEG, struct.pack("!III", 6, 0x1FF, 0))[0] == milter.OPTNEG
        c.send(milter.CONNECT, b"client.test\x004\x00\x19192.0.2.7\0")
        c.send(milter.MAIL, b"<s@sender.test>\0")
        c.send(milter.RCPT, b"<bob@example.org>\0")
        for name, value in [(b"Authentication-Results", b"other.example; spf=fail"),
                            (b"Authentication-Results", b"MX1.example.net; dmarc=pass"),
                            (b"ARC-Authentication-Results", b"i=1; mx1.example.net; dmarc=pass"),
                            (b"authentication-results", b"(x) mx1.example.net.; dkim=pass"),
                            (b"Subject", b"hi")]:
            assert c.send(milter.HEADER, name + b"\0" + value + b"\0")[0] == milter.CONTINUE
        c.send(milter.EOH)
        c.send(milter.BODY, b"Hello.\r\n")
        c.sock.sendall(packet(milter.BODYEOB))
        out = []
        while True:
            (n,) = struct.unpack("!I", c.reader.read(4))
            body = c.reader.read(n)
            out.append((body[:1], body[1:]))
            if body[:1] in (milter.ACCEPT, milter.REPLYCODE):
                break
        deleted = {(d[4:].split(b"\0")[0].lower(), struct.unpack("!I", d[:4])[0])
                   for command, d in out if command == milter.CHGHEADER}
        assert deleted == {(b"authentication-results", 2), (b"authentication-results", 3),
                           (b"arc-authentication-results", 1)}
    finally:
        proc.stop()
