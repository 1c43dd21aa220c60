"""Zip attachments past clamd's limits, judged from the zip's own directory.

clamd (1.4.6) cuts a zip member bigger than its MaxFileSize at MaxFileSize, scans that much
and answers OK, even with `AlertExceedsMax yes`: a 1 GB member of zeros (1 MB zipped) would
pass as clean. The relay reads the central directory of every zip leaf (declared sizes, no
decompression) and refuses what clamd could not look at in full, through a running relay
and the tests' own clamd at its default limits (100M per file, 400M per scan)."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest

from filters.archive import MAX_MEMBERS, ZipSummary, zip_excess, zip_summary
from filters.clamav import MAX_FILE_SIZE, MAX_SCAN_SIZE
from filters.mime import INLINE_STEPS, TooComplex, split_parts
from tests.make_fixtures import with_attachment
from tests.support import free_port, unref
from tests.test_content import scanners, send
from tests.test_metrics import scrape, value
from tests.test_scan_poisoning import crlf
from tests.test_smtp import ALIASES, spooled

pytest_plugins = ["tests.scanner_fixtures"]

GB = 1 << 30


def one_member_bomb(size: int = GB) -> bytes:
    """One member of `size` zero bytes, deflated at level 9 (~1 MB for 1 GB), streamed so
    the test never holds the gigabyte."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z, \
            z.open("zeros.bin", "w", force_zip64=True) as member:
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            member.write(chunk)
    return buf.getvalue()


def small_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            z.writestr(f"notes{i}.txt", f"meeting notes, page {i}\n" * 50)
    return buf.getvalue()


def zip_message(name: str, data: bytes) -> bytes:
    return crlf(with_attachment(f"see {name}", "Attached.", data, name,
                                ctype="application/octet-stream"))


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = one_member_bomb()
    assert len(data) < 2 << 20  # a small message: nothing else in the relay refuses it
    return data


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def relay(start_relay, sqlite_url, clamd, spamd, metrics_port):  # type: ignore[no-untyped-def]
    """Default [clamav] limits: clamd's own defaults, as the tests' clamd runs with."""
    return start_relay(sqlite_url, aliases=ALIASES, max_message_size=4 << 20,
                       extra=scanners(clamd.unix_address, spamd.address)
                       + f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')


def test_one_gigabyte_zip_member_is_refused_as_past_the_limits(relay, bomb) -> None:  # type: ignore[no-untyped-def]
    # named .dat: the check goes by content (PK\x03\x04), not by the file name
    message = zip_message("report.dat", bomb)
    for _ in range(2):  # never cached: the second copy is judged again
        code, reply = send(relay, message)
        assert (code, unref(reply)) == (554, "5.7.0 Message exceeds virus scanner limits")
    relay.wait_for_log(r"reason=scan_limits code=554 .*detail=\"?zip member zeros\.bin "
                       r"1,073,741,824 bytes > max_file_size 104,857,600")
    assert spooled(relay) == []


def test_a_small_zip_passes_and_is_cached_as_before(relay, metrics_port) -> None:  # type: ignore[no-untyped-def]
    message = zip_message("notes.zip", small_zip())
    assert send(relay, message) == (250, "queued")
    assert value(scrape(metrics_port), "floodgate_cache_hits_total", cache="clamav") == 0
    assert send(relay, message) == (250, "queued")
    assert value(scrape(metrics_port), "floodgate_cache_hits_total", cache="clamav") > 0
    assert len(spooled(relay)) == 2


def test_a_truncated_zip_is_refused_as_unreadable(relay) -> None:  # type: ignore[no-untyped-def]
    """Cut before its central directory: nothing says what it holds, and no unzip on the
    recipient's side could open it either."""
    data = small_zip()
    cut = data[:data.index(b"PK\x01\x02")]
    code, reply = send(relay, zip_message("notes.zip", cut))
    assert (code, unref(reply)) == (554, "5.7.0 Message exceeds virus scanner limits")
    relay.wait_for_log(r"reason=scan_limits code=554 .*detail=\"?zip directory unreadable")
    assert spooled(relay) == []


# -- the directory alone (filters/archive.py) -----------------------------------------------

def patched(data: bytes, entry: int, field: int, fmt: str, value: int) -> bytes:
    """`data` with one field of its `entry`-th central directory record set to `value`."""
    at = -1
    for _ in range(entry + 1):
        at = data.index(b"PK\x01\x02", at + 1)
    out = bytearray(data)
    struct.pack_into(fmt, out, at + field, value)
    return bytes(out)


def test_overlapping_members_are_unreadable() -> None:
    """Fifield's zip bomb: directory entries sharing one member's bytes."""
    overlap = patched(small_zip(), 1, 42, "<I", 0)  # second member's local header offset
    assert zip_excess(zip_summary(overlap), MAX_FILE_SIZE, MAX_SCAN_SIZE) == (
        "zip directory unreadable: members 'notes0.txt' and 'notes1.txt' overlap")


def test_a_member_pointing_outside_the_zip_is_unreadable() -> None:
    bad = patched(small_zip(), 2, 42, "<I", 7)
    assert zip_excess(zip_summary(bad), MAX_FILE_SIZE, MAX_SCAN_SIZE) == (
        "zip directory unreadable: member 'notes2.txt': no local header at offset 7")


def test_too_many_members_are_not_parsed() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(MAX_MEMBERS + 1):
            z.writestr(f"{i}", b"")
    assert zip_summary(buf.getvalue()) == ZipSummary(
        error=f"more than {MAX_MEMBERS:,} members")


def test_declared_sizes_are_judged_against_the_limits() -> None:
    data = small_zip()
    summary = zip_summary(data)
    assert summary is not None and summary.members == 3
    assert zip_excess(summary, MAX_FILE_SIZE, MAX_SCAN_SIZE) is None
    assert zip_excess(summary, 1000, 0) == "zip member notes0.txt 1,100 bytes > max_file_size 1,000"
    assert zip_excess(summary, 0, 3000) == (
        "zip members 3,300 bytes in all > max_scan_size 3,000")
    assert zip_summary(b"PK\x05\x06" + bytes(18)) is None  # an empty zip: not a PK\3\4 file


def test_a_bomb_within_the_limits_is_still_a_bomb() -> None:
    """50 MB of zeros: within clamd's 100M, at deflate's 1,000:1."""
    bomb = one_member_bomb(50 << 20)
    assert zip_excess(zip_summary(bomb), MAX_FILE_SIZE, MAX_SCAN_SIZE).startswith(
        "zip member zeros.bin 52,428,800 bytes from ")


def test_a_zip_of_thousands_of_entries_is_read_off_the_event_loop() -> None:
    """Reading a directory costs about 8 us an entry: a message under the inline size whose
    zip holds 2,000 entries spends the inline budget (filters.mime.INLINE_STEPS), so its
    split goes to the offload child; one of a few entries stays inline."""
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as z:
        for i in range(2000):
            z.writestr(f"f{i}.txt", b"")
    big = zip_message("many.zip", many.getvalue())
    assert len(big) < 1 << 20
    with pytest.raises(TooComplex):
        split_parts(big, INLINE_STEPS)
    [summary] = split_parts(big).archives  # what the child answers
    assert summary.members == 2000 and summary.error is None
    assert split_parts(zip_message("small.zip", small_zip()), INLINE_STEPS).archives
