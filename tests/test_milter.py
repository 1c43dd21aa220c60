"""The milter protocol (relay/smtp/milter.py) in process: a whole conversation as Postfix has
it, the bounds, and a hypothesis fuzz of the packet stream (tests/test_postfix_adoption.py
runs it under a real Postfix)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from filters.base import Context, Stage, Verdict
from relay.auth.authenticator import Authenticator
from relay.config.auth import AuthConfig
from relay.delivery.spool import Spool
from relay.smtp import milter
from relay.smtp.handler import RelayHandler
from relay.smtp.milter import MilterProtocolError, MilterSession, packet, read_packet, serve_milter
from relay.smtp.pipeline import Pipeline
from tests import test_fuzz  # noqa: F401 - its hypothesis profiles
from tests.dns_server import run_nsd

MAX_SIZE = 2000


class Events:
    """Stands in for the event writer: keeps what was recorded."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def emit(self, event: object) -> None:
        self.events.append(event)


class Tempfail:
    def failed(self, why: str) -> Verdict | None:
        return Verdict.tempfail(451, "4.3.0", "scanner_error", "Cannot scan, try again later",
                                detail=why)


class Scanner:
    """A DATA filter that refuses a body saying VIRUS, fails on BROKEN, else accepts with
    scan headers."""

    name = "scanner"
    stage = Stage.DATA
    timeout = 5.0
    on_error = Tempfail()

    async def check(self, ctx: Context) -> Verdict | None:
        if b"BROKEN" in ctx.content:
            raise ConnectionRefusedError("scanner down")
        if b"VIRUS" in ctx.content:
            return Verdict.reject(554, "5.7.1", "virus", "Virus found: Test.Sig")
        return Verdict.accept(250, "2.0.0", "scanned", "ok",
                              headers=(("X-Spam-Flag", "NO"), ("X-Spam-Score", "0.1")))


def handler(tmp: Path) -> tuple[RelayHandler, Events]:
    events = Events()
    return RelayHandler(node="t", hostname="mx.test", pipeline=Pipeline([Scanner()]),
                        spool=Spool(tmp), events=events,  # type: ignore[arg-type]
                        max_recipients=50), events


class Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        return None


def replies(data: bytes) -> list[tuple[bytes, bytes]]:
    """The reply packets written, as (command, data)."""
    out = []
    while data:
        (n,) = struct.unpack("!I", data[:4])
        out.append((data[4:5], data[5:4 + n]))
        data = data[4 + n:]
    return out


def converse(tmp: Path, stream: bytes, auth: AuthConfig | None = None
             ) -> tuple[list[tuple[bytes, bytes]], Events]:
    async def run() -> tuple[bytes, Events]:
        h, events = handler(tmp)
        if auth is not None:
            h.auth = Authenticator(auth, "mx.test")
        reader = asyncio.StreamReader()
        reader.feed_data(stream)
        reader.feed_eof()
        writer = Writer()
        await serve_milter(MilterSession(h, MAX_SIZE), reader, writer)  # type: ignore[arg-type]
        return bytes(writer.out), events

    out, events = asyncio.run(run())
    return replies(out), events


def message(body: bytes, headers: tuple[tuple[bytes, bytes], ...] = (),
            sender: bytes = b"s@sender.test") -> bytes:
    return b"".join([
        packet(milter.OPTNEG, struct.pack("!III", 6, 0x1FF, 0)),
        packet(milter.MACRO, b"C" + b"j\0mx.test\0"),
        packet(milter.CONNECT, b"client.test\x004\x00\x19192.0.2.7\0"),
        packet(milter.HELO, b"client.test\0"),
        packet(milter.MAIL, b"<" + sender + b">\0SIZE=10\0"),
        packet(milter.RCPT, b"<bob@example.org>\0"),
        packet(milter.MACRO, b"T" + b"i\0ABC123\0"),
        packet(milter.DATA),
        *(packet(milter.HEADER, n + b"\0" + v + b"\0") for n, v in headers),
        packet(milter.HEADER, b"Subject\0hi\0"),
        packet(milter.EOH),
        packet(milter.BODY, body),
        packet(milter.BODYEOB),
        packet(milter.QUIT),
    ])


def test_clean_message_accepted_with_headers_and_forged_ones_deleted(tmp_path: Path) -> None:
    out, events = converse(tmp_path, message(b"Hello.\r\n", (
        (b"X-Spam-Score", b"-100"), (b"From", b"a@b.test"), (b"x-spam-score", b"-50"))))
    assert out[0][0] == milter.OPTNEG
    version, actions, protocol = struct.unpack("!III", out[0][1])
    assert (version, protocol) == (6, 0) and actions == 0x11
    # CONNECT, HELO, MAIL, RCPT, DATA, four header fields, EOH, BODY
    assert [c for c, _ in out[1:12]] == [milter.CONTINUE] * 11
    end = out[12:]
    # forged fields deleted (index among fields of that name, last first), ours added
    assert end[0] == (milter.CHGHEADER, struct.pack("!I", 2) + b"x-spam-score\0\0")
    assert end[1] == (milter.CHGHEADER, struct.pack("!I", 1) + b"X-Spam-Score\0\0")
    assert end[2:4] == [(milter.ADDHEADER, b"X-Spam-Flag\0NO\0"),
                        (milter.ADDHEADER, b"X-Spam-Score\x000.1\0")]
    assert end[4] == (milter.ACCEPT, b"")
    last = events.events[-1]
    assert (last.client, last.reason, last.queue_id, last.sender) == (  # type: ignore[attr-defined]
        "192.0.2.7", "accepted", "ABC123", "s@sender.test")


def test_authentication_results_replace_the_senders_claims_to_our_id(tmp_path: Path) -> None:
    """[auth] on: the sender's Authentication-Results and ARC-Authentication-Results naming
    our authserv-id are deleted, ours inserted at the top (index 0); another id's kept.
    A DMARC p=reject failure is refused with the relay's 550 5.7.1."""
    zone = ['@ IN TXT "v=spf1 ip4:192.0.2.7 -all"', '_dmarc IN TXT "v=DMARC1; p=reject"',
            'fail IN TXT "v=spf1 -all"', '_dmarc.fail IN TXT "v=DMARC1; p=reject"']
    with run_nsd(tmp_path / "dns", {"sender.test": zone}) as dns:
        auth = AuthConfig(enabled=True, nameserver=dns.nameserver, timeout=1.0)
        out, _ = converse(tmp_path, message(b"Hello.\r\n", (
            (b"Authentication-Results", b"other.test; spf=fail"),
            (b"Authentication-Results", b" MX.test;\n\tspf=pass smtp.mailfrom=x"),
            (b"From", b"s@sender.test"),
            (b"ARC-Authentication-Results", b"i=1; mx.test; dmarc=pass"))), auth)
        refused, _ = converse(tmp_path, message(b"Hello.\r\n", (
            (b"From", b"s@fail.sender.test"),), sender=b"s@fail.sender.test"), auth)
    end = out[13:]
    assert end[0] == (milter.CHGHEADER,
                      struct.pack("!I", 1) + b"ARC-Authentication-Results\0\0")
    assert end[1] == (milter.CHGHEADER, struct.pack("!I", 2) + b"Authentication-Results\0\0")
    assert [c for c, _ in end[2:4]] == [milter.ADDHEADER] * 2  # the scanner's X-Spam-*
    command, data = end[4]
    assert command == milter.INSHEADER and data.startswith(
        struct.pack("!I", 0) + b"Authentication-Results\0mx.test; spf=pass"), end[4]
    assert b"dmarc=pass (aligned spf) header.from=sender.test" in data.replace(b"\n\t", b" ")
    assert end[5:] == [(milter.ACCEPT, b"")]
    command, data = refused[-1]
    assert command == milter.REPLYCODE
    assert data.startswith(b"550 5.7.1 DMARC policy of fail.sender.test rejects this message")


def test_refusal_is_the_relays_reply_with_its_reference(tmp_path: Path) -> None:
    out, events = converse(tmp_path, message(b"a VIRUS here\r\n"))
    command, data = out[-1]
    assert command == milter.REPLYCODE
    text = data.rstrip(b"\0").decode()
    assert text.startswith("554 5.7.1 Virus found: Test.Sig [ref ")
    last = events.events[-1]
    assert last.reason == "virus" and last.session in text  # type: ignore[attr-defined]


def test_scanner_failure_is_a_tempfail(tmp_path: Path) -> None:
    out, _ = converse(tmp_path, message(b"BROKEN\r\n"))
    assert out[-1][0] == milter.REPLYCODE
    assert out[-1][1].startswith(b"451 4.3.0 Cannot scan, try again later [ref ")


def test_body_over_the_size_limit_is_refused_not_kept(tmp_path: Path) -> None:
    out, events = converse(tmp_path, message(b"x" * 60_000))
    assert out[-1][1].startswith(b"552 5.3.4 Message size exceeds fixed maximum message size")
    assert events.events[-1].reason == "size"  # type: ignore[attr-defined]


def test_oversized_packet_closes_the_connection(tmp_path: Path) -> None:
    stream = struct.pack("!I", milter.MAX_PACKET + 1) + b"B" + b"x" * 100
    out, events = converse(tmp_path, packet(milter.OPTNEG, struct.pack("!III", 6, 0x1FF, 0))
                           + stream + packet(milter.BODYEOB))
    assert [c for c, _ in out] == [milter.OPTNEG]  # nothing after: Postfix tempfails
    assert events.events == []


COMMANDS = [milter.ABORT, milter.BODY, milter.CONNECT, milter.MACRO, milter.BODYEOB,
            milter.HELO, milter.QUIT_NC, milter.HEADER, milter.MAIL, milter.EOH, milter.OPTNEG,
            milter.RCPT, milter.DATA, milter.UNKNOWN, b"X"]


@given(st.lists(st.one_of(
    st.tuples(st.sampled_from(COMMANDS), st.binary(max_size=3000)).map(lambda p: packet(*p)),
    st.binary(max_size=64)), max_size=30))
def test_fuzz_any_packet_stream_ends_cleanly_within_bounds(tmp_path_factory, chunks) -> None:  # type: ignore[no-untyped-def]
    """Whatever the MTA sends: no exception escapes, every reply is a well-formed packet of
    a known kind, and no message held grows past the size limit."""
    tmp = tmp_path_factory.mktemp("fuzz")

    async def run() -> bytes:
        h, _ = handler(tmp)
        reader = asyncio.StreamReader()
        reader.feed_data(b"".join(chunks))
        reader.feed_eof()
        out = bytearray()
        session = MilterSession(h, MAX_SIZE)
        # serve_milter's loop without its catch-all: any exception but the protocol's fails
        while not session.closed:
            try:
                got = await read_packet(reader)
                if got is None:
                    break
                out += b"".join(await session.handle(*got))
            except MilterProtocolError:
                break
            assert sum(len(x) for x in session.head) + len(session.body) <= MAX_SIZE
        return bytes(out)

    for command, _ in replies(asyncio.run(run())):
        assert command in (milter.OPTNEG, milter.CONTINUE, milter.ACCEPT, milter.REPLYCODE,
                           milter.ADDHEADER, milter.CHGHEADER)
