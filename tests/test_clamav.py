"""ClamAV filter against a real clamd loading only fixtures/clamav/, plus injected faults."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path

import pytest

from filters.base import Action, Context
from filters.clamav import (
    ClamAVFilter,
    ClamdClient,
    ClamdError,
    ClamdSizeLimit,
    parse_scan_reply,
)
from filters.endpoints import parse_address
from filters.failure import UNSCANNED_HEADER
from tests.make_fixtures import (
    EICAR,
    SIG_CLAMEXE,
    SIG_EICAR,
    SIG_WORM,
    TESTFILES,
    uuencode,
    with_attachment,
)
from tests.services import MESSAGES, Clamd, FakeService, free_port, run_clamd

pytest_plugins = ["tests.scanner_fixtures"]  # real clamd and spamd, session-wide


def load(name: str) -> bytes:
    """A fixture message as it arrives over SMTP: CRLF line endings."""
    return (MESSAGES / name).read_bytes().replace(b"\n", b"\r\n")


def ctx(content: bytes) -> Context:
    return Context(client="192.0.2.7", rcpts=["bob@example.org"], content=content)


def scan(f: ClamAVFilter, content: bytes):
    return asyncio.run(f.check(ctx(content)))


# -- protocol pieces ---------------------------------------------------------------------

def test_parse_scan_reply() -> None:
    assert parse_scan_reply("stream: OK") is None
    assert parse_scan_reply("stream: Eicar-Test-Signature FOUND") == "Eicar-Test-Signature"
    with pytest.raises(ClamdSizeLimit):
        parse_scan_reply("INSTREAM size limit exceeded. ERROR")
    for garbage in ("", "stream: FOUND", "PONG", "stream: ok", "I am not clamd"):
        with pytest.raises(ClamdError):
            parse_scan_reply(garbage)


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:3310") == ("127.0.0.1", 3310)
    assert parse_address("[::1]:3310") == ("::1", 3310)
    assert parse_address("/run/clamav/clamd.ctl") == "/run/clamav/clamd.ctl"
    assert parse_address("unix:clamd.sock") == "clamd.sock"
    for bad in ("127.0.0.1", "host:0", "host:99999", ""):
        with pytest.raises(ValueError):
            parse_address(bad)


# -- real clamd ----------------------------------------------------------------------------

@pytest.mark.parametrize(("message", "signature"), [
    ("eicar.eml", SIG_EICAR),
    ("clam-zip.eml", SIG_CLAMEXE),
    ("clam-targz.eml", SIG_CLAMEXE),
    ("clam-uu.eml", SIG_CLAMEXE),
    ("forward-clam-zip.eml", SIG_CLAMEXE),
    ("worm.eml", SIG_WORM),
])
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_virus_refused_with_signature(clamd: Clamd, message: str, signature: str,
                                      transport: str) -> None:
    address = clamd.unix_address if transport == "unix" else clamd.address
    v = scan(ClamAVFilter(ClamdClient(address, timeout=10)), load(message))
    assert v is not None and v.action == Action.REJECT
    assert (v.code, v.status, v.reason) == (554, "5.7.1", "virus")
    assert v.detail.startswith(signature)  # clamd adds ".UNOFFICIAL" to local signatures
    assert v.reply == f"554 5.7.1 Virus found: {v.detail}"


@pytest.mark.parametrize("name", ["clam.7z", "clam.cab", "clam.exe.bz2", "clam.impl.zip",
                                  "clam.arj", "clam-upx.exe"])
def test_clamd_unpacks_containers(clamd: Clamd, name: str) -> None:
    """Only a hash of plain clam.exe is in our database: detection inside these containers
    proves clamd unpacked the attachment (a hash of the container would not match)."""
    content = with_attachment("Files", "see attached", (TESTFILES / name).read_bytes(),
                              name).encode().replace(b"\n", b"\r\n")
    v = scan(ClamAVFilter(ClamdClient(clamd.address, timeout=10)), content)
    assert v is not None and v.detail.startswith(SIG_CLAMEXE)


def test_inline_uuencode_in_text_body(clamd: Clamd) -> None:
    body = uuencode((TESTFILES / "clam.exe").read_bytes(), "clam.exe")
    content = (b"From: a@sender.example\r\nTo: b@example.org\r\nSubject: uu\r\n\r\n"
               + b"Here it is:\r\n\r\n" + body.replace("\n", "\r\n").encode() + b"\r\n")
    v = scan(ClamAVFilter(ClamdClient(clamd.address, timeout=10)), content)
    assert v is not None and v.detail.startswith(SIG_CLAMEXE)


@pytest.mark.parametrize("message", ["clean.eml", "sample-nonspam.eml", "gtube.eml"])
def test_clean_passes(clamd: Clamd, message: str) -> None:
    assert scan(ClamAVFilter(ClamdClient(clamd.address, timeout=10)), load(message)) is None


def test_stream_crosses_many_chunks(clamd: Clamd) -> None:
    """EICAR split across tiny INSTREAM chunks, far into the stream."""
    content = (b"Subject: padded\r\n\r\n" + b"x" * 70_000 + b"\r\n" + EICAR + b"\r\n")
    client = ClamdClient(clamd.address, timeout=10, chunk_size=7)
    assert asyncio.run(client.instream(content)).startswith(SIG_EICAR)
    assert asyncio.run(client.instream(b"hello " * 20_000)) is None
    assert client.scans == 2


def test_version_and_ping(clamd: Clamd) -> None:
    client = ClamdClient(clamd.unix_address, timeout=5)
    assert asyncio.run(client.version()).startswith("ClamAV ")
    assert asyncio.run(client.ping()) is True


@pytest.fixture(scope="module")
def small_clamd(tmp_path_factory: pytest.TempPathFactory):
    with run_clamd(tmp_path_factory.mktemp("small-clamd"), stream_max_length="64K") as c:
        yield c


@pytest.mark.parametrize(("policy", "action", "reply"), [
    ("reject", Action.REJECT, "552 5.3.4"),
    ("tempfail", Action.TEMPFAIL, "451 4.3.0"),
    ("accept", Action.ACCEPT, "250 2.0.0"),
])
def test_over_clamd_stream_limit(small_clamd: Clamd, policy: str, action: Action,
                                 reply: str) -> None:
    """clamd itself refuses the stream (StreamMaxLength 64K): the configured policy."""
    content = with_attachment("big", "big", bytes(200_000), "big.bin").encode()
    f = ClamAVFilter(ClamdClient(small_clamd.address, timeout=10), on_oversize=policy)  # type: ignore[arg-type]
    v = scan(f, content)
    assert v is not None and v.action == action and v.reply.startswith(reply)
    assert "size limit" in v.detail
    if action == Action.ACCEPT:
        assert v.headers and v.headers[0][0] == UNSCANNED_HEADER
    assert f.client.scans == 1


def test_over_configured_max_size_needs_no_round_trip() -> None:
    """max_size refuses before connecting: the address here has nothing listening."""
    f = ClamAVFilter(ClamdClient(f"127.0.0.1:{free_port()}", timeout=1), max_size=1000)
    v = scan(f, b"Subject: x\r\n\r\n" + b"y" * 2000)
    assert v is not None and v.reply.startswith("552 5.3.4") and f.client.scans == 0


# -- faults --------------------------------------------------------------------------------

def test_nothing_listening_tempfails_by_default() -> None:
    f = ClamAVFilter(ClamdClient(f"127.0.0.1:{free_port()}", timeout=2))
    v = scan(f, load("clean.eml"))
    assert v is not None and v.action == Action.TEMPFAIL
    assert v.reply == "451 4.3.0 Temporary failure in virus scan, try again later"
    assert v.reason == "clamav_error" and "ConnectionRefused" in v.detail


def test_missing_socket_accept_mode_adds_header(tmp_path: Path) -> None:
    f = ClamAVFilter(ClamdClient(str(tmp_path / "nope.sock"), timeout=2), on_error=Action.ACCEPT)
    v = scan(f, load("clean.eml"))
    assert v is not None and v.action == Action.ACCEPT and v.reason == "clamav_unscanned"
    assert v.headers == ((UNSCANNED_HEADER, f"clamav ({v.detail})"),)
    assert "FileNotFound" in v.detail


def test_garbage_answer_is_451_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with FakeService("garbage", b"HELLO THERE\0") as fake:
        f = ClamAVFilter(ClamdClient(fake.address, timeout=5))
        with caplog.at_level(logging.WARNING, logger="floodgate.clamav"):
            v = scan(f, load("eicar.eml"))
    assert v is not None and v.reply.startswith("451 4.3.0")
    assert "HELLO THERE" in v.detail
    assert any("clamd scan failed" in r.message and "HELLO THERE" in r.message
               for r in caplog.records)
    assert fake.received.startswith(b"zINSTREAM\0")


@pytest.mark.parametrize("mode", ["close", "reset"])
def test_early_hang_up_is_an_error_not_a_size_limit(mode: str) -> None:
    """A peer that hangs up (or resets) before 64 KiB arrived is no StreamMaxLength: a small
    message must meet on_error, never on_oversize's permanent 552. Repeated so the reset
    lands both while writing and while reading the reply."""
    with FakeService(mode) as fake:
        f = ClamAVFilter(ClamdClient(fake.address, timeout=5, chunk_size=512),
                         on_oversize="reject")
        for _ in range(20):
            v = scan(f, load("clean.eml"))
            assert v is not None and v.reply.startswith("451 4.3.0"), v.reply
            assert v.reason == "clamav_error"


def test_hang_times_out_and_closes_connection() -> None:
    with FakeService("hang") as fake:
        f = ClamAVFilter(ClamdClient(fake.address, timeout=0.5))
        v = scan(f, load("clean.eml"))
        assert v is not None and v.reply.startswith("451 4.3.0")
        assert v.detail == "timeout after 0.5s"
        assert fake.wait_closed(1), "the timed-out connection must be closed, not leaked"
    # What was sent is a well-formed INSTREAM: command, chunk, terminating zero chunk.
    data = bytes(fake.received)
    assert data.startswith(b"zINSTREAM\0") and data.endswith(b"\0\0\0\0")


def test_cancelled_scan_closes_connection() -> None:
    """The SMTP session going away cancels the check: the socket must go with it."""
    async def go(address: str) -> None:
        f = ClamAVFilter(ClamdClient(address, timeout=30))
        task = asyncio.create_task(f.check(ctx(load("clean.eml"))))
        while fake.connections == 0:
            await asyncio.sleep(0.01)  # polling for the fake's accept
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with FakeService("hang") as fake:
        asyncio.run(go(fake.address))
        assert fake.wait_closed(1)


def test_clamd_stopped_mid_run_then_recovers(own_clamd: Clamd) -> None:
    async def go() -> list:
        f = ClamAVFilter(ClamdClient(own_clamd.address, timeout=5))
        out = [await f.check(ctx(load("eicar.eml")))]
        await asyncio.to_thread(own_clamd.stop)
        out.append(await f.check(ctx(load("eicar.eml"))))
        out.append(await f.check(ctx(load("clean.eml"))))
        await asyncio.to_thread(own_clamd.start)
        out.append(await f.check(ctx(load("eicar.eml"))))
        out.append(await f.check(ctx(load("clean.eml"))))
        return out

    before, down_virus, down_clean, after_virus, after_clean = asyncio.run(go())
    assert before is not None and before.reply.startswith("554 5.7.1")
    assert down_virus is not None and down_virus.reply.startswith("451 4.3.0")
    assert down_clean is not None and down_clean.reply.startswith("451 4.3.0")
    assert after_virus is not None and after_virus.detail.startswith(SIG_EICAR)
    assert after_clean is None


def test_base64_attachment_is_really_base64() -> None:
    """Guard the fixture: EICAR travels encoded, so only a decoding scanner can see it."""
    raw = (MESSAGES / "eicar.eml").read_bytes()
    assert EICAR not in raw
    assert base64.b64encode(EICAR)[:20] in raw.replace(b"\n", b"")
