"""No verdict can be borrowed: through a running relay with real clamd and spamd, a cached
verdict is reused only for content the scanner would see the same way, and what clamd could
not look at in full (past its limits) is refused, never taken for clean."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.delivery.spool import read_file
from tests.make_fixtures import EICAR, SIG_EICAR, TESTFILES, with_attachment
from tests.services import SIGNATURES, Clamd, free_port, run_clamd
from tests.support import unref
from tests.test_content import scanners, send
from tests.test_smtp import ALIASES, spooled

pytest_plugins = ["tests.scanner_fixtures"]

# An innocent body. Under HAM headers spamd scores it 0; under SPAM headers 15 (no body rule
# fires: FROM_NO_USER, MISSING_MID, DRUG_ED_CAPS in the Subject, XPRIO, ...).
BODY = (b"Hello Bob,\r\n\r\nthe minutes of Tuesday's meeting are below. See you on Friday."
        b"\r\n\r\nAlice\r\n")
HAM = (b"From: Alice <alice@sender.example>\r\nTo: <bob@example.org>\r\nSubject: minutes\r\n"
       b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <a1b2c3@sender.example>\r\n"
       b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
SPAM = (b'From: "VIAGRA" <>\r\nTo: undisclosed-recipients:;\r\n'
        b"Subject: =?utf-8?B?RlJFRSBWSUFHUkEgISEhIENMSUNLIEhFUkU=?= FREE!!! $$$ 100% GUARANTEED"
        b"\r\nDate: Tue, 14 Nov 2034 22:13:20 +0000\r\nX-Mailer: The Bat! (v1.52f) Business\r\n"
        b"X-Priority: 1\r\nX-MSMail-Priority: High\r\nReply-To: <>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n")


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def victim_message() -> bytes:
    """A message with an attachment, the shape outbreak mode caches part by part."""
    return crlf(with_attachment("Q3 figures", "The figures are attached.",
                                b"%PDF-1.4 quarterly figures, nothing else\n" * 40,
                                "figures.pdf", ctype="application/pdf"))


def eicar_in_header(message: bytes) -> bytes:
    return b"X-Note: " + EICAR + b"\r\n" + message


@pytest.fixture
def relay(start_relay, sqlite_url, clamd, spamd):  # type: ignore[no-untyped-def]
    """Both verdict caches on (the default), as in production."""
    return start_relay(sqlite_url, aliases=ALIASES,
                       extra=scanners(clamd.unix_address, spamd.address))


def test_spam_scored_by_its_headers_is_refused_after_a_warm_up(relay) -> None:  # type: ignore[no-untyped-def]
    assert send(relay, HAM + BODY) == (250, "queued")
    code, reply = send(relay, SPAM + BODY)
    assert (code, reply[:5]) == (550, "5.7.1"), reply
    assert "spam (score 15.0)" in reply
    assert len(spooled(relay)) == 1


def test_eicar_in_a_header_is_refused_after_a_warm_up(relay) -> None:  # type: ignore[no-untyped-def]
    assert send(relay, victim_message()) == (250, "queued")
    code, reply = send(relay, eicar_in_header(victim_message()))
    assert code == 554 and reply.startswith(f"5.7.1 Virus found: {SIG_EICAR}")
    assert len(spooled(relay)) == 1
    relay.wait_for_log(rf"reason=virus code=554 .*detail={SIG_EICAR}")


def test_attacker_cannot_get_a_victims_message_refused(relay) -> None:  # type: ignore[no-untyped-def]
    code, reply = send(relay, eicar_in_header(victim_message()))
    assert code == 554 and reply.startswith(f"5.7.1 Virus found: {SIG_EICAR}")
    assert send(relay, victim_message()) == (250, "queued")
    [path] = spooled(relay)
    assert read_file(path)[1].endswith(victim_message().split(b"\r\n\r\n", 1)[1])
    # and the header-borne virus is still refused on every copy, cache or not
    assert send(relay, eicar_in_header(victim_message()))[0] == 554


# -- past clamd's limits --------------------------------------------------------------------

def nested_zip(depth: int, payload: bytes = EICAR) -> bytes:
    """`payload` in a zip in a zip ... `depth` deep."""
    data, name = payload, "eicar.com"
    for level in range(depth):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(name, data)
        data, name = buf.getvalue(), f"level{level}.zip"
    return data


def zip_bomb(members: int, size: int) -> bytes:
    """`members` files of `size` zero bytes each: a few KB that unpack to members * size."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for i in range(members):
            z.writestr(f"part{i}.bin", bytes(size))
    return buf.getvalue()


MAX_FILE_SIZE = 1 << 20
MAX_SCAN_SIZE = 2 << 20


@pytest.fixture(scope="module")
def limits_clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    """Limits low enough to go past with a few KB (1M per file, 2M per scan); the
    AlertExceedsMax that every test clamd has makes clamd say so."""
    with run_clamd(tmp_path_factory.mktemp("limits-clamd"), max_file_size="1M",
                   max_scan_size="2M") as server:
        yield server


def archives() -> list[tuple[str, bytes, str]]:
    bomb = zip_bomb(8, 4 * MAX_FILE_SIZE)
    assert len(bomb) < 64 * 1024 and 8 * 4 * MAX_FILE_SIZE > MAX_SCAN_SIZE
    cases = [("nested.zip", nested_zip(16), "MaxRecursion"),
             ("bomb.zip", bomb, "MaxScanSize")]
    emax = TESTFILES / "clam_cache_emax.tgz"  # ClamAV's own test of its limits
    if emax.exists():
        cases.append(("clam_cache_emax.tgz", emax.read_bytes(), "MaxRecursion"))
    return cases


@pytest.mark.parametrize("policy", ["reject", "accept"])
def test_archives_past_clamd_limits_are_refused_and_never_cached(  # type: ignore[no-untyped-def]
        start_relay, sqlite_url, limits_clamd, spamd, policy: str) -> None:
    extra = "" if policy == "reject" else f'on_limits = "{policy}"'
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra=scanners(limits_clamd.address, spamd.address, clamav_extra=extra))
    for name, data, limit in archives():
        message = crlf(with_attachment(f"see {name}", "Attached.", data, name,
                                       ctype="application/zip"))
        for _ in range(2):  # the second copy is scanned again, not answered from the cache
            before = limits_clamd.scans()
            code, reply = send(relay, message)
            assert limits_clamd.wait_scans(before + 1) > before
            if policy == "reject":
                assert (code, unref(reply)) == (554, "5.7.0 Message exceeds virus scanner limits")
                relay.wait_for_log(rf"reason=scan_limits code=554 .*"
                                   rf"detail=Heuristics\.Limits\.Exceeded\.{limit}")
            else:
                assert (code, reply) == (250, "queued")
    if policy == "accept":
        heads = [read_file(p)[1].split(b"\r\n\r\n", 1)[0] for p in spooled(relay)]
        assert len(heads) == 2 * len(archives())
        assert all(b"X-Floodgate-Unscanned: clamav (Heuristics.Limits.Exceeded." in h
                   for h in heads)
    else:
        assert spooled(relay) == []


def test_a_clean_archive_within_the_limits_passes(  # type: ignore[no-untyped-def]
        start_relay, sqlite_url, limits_clamd, spamd) -> None:
    """The limits verdict is about clamd's limits, not about archives: one level less and a
    harmless payload is clean."""
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra=scanners(limits_clamd.address, spamd.address))
    message = crlf(with_attachment("nested", "Attached.", nested_zip(8, b"just text\n"),
                                   "nested.zip", ctype="application/zip"))
    assert send(relay, message) == (250, "queued")


def test_clamd_that_the_tests_and_demo_start_reports_limits(tmp_path: Path) -> None:
    """scripts/demo runs tests.services, which writes this same configuration."""
    clamd = Clamd(tmp_path, free_port(), SIGNATURES)
    clamd.write_config()
    assert "AlertExceedsMax yes" in clamd.config.read_text().splitlines()
