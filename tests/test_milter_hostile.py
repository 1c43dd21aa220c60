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


@pytest.fixture
def milter_process(start_relay, sqlite_url) -> Iterator[RelayProcess]:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES)
    port = free_port()
    proc = RelayProcess(relay.config, port, log_name="milter",
                        command=("milter", "--listen", f"127.0.0.1:{port}")).start()
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
