"""Outbreak mode: the verdict cache alone, MIME leaf digests, and the ClamAV filter using
them against a real clamd whose own log counts the scans it did."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from filters.base import Action, Context
from filters.clamav import ClamAVFilter, ClamdClient
from filters.mime import body_digest, digest, split_parts
from filters.verdict_cache import VerdictCache
from tests.make_fixtures import (
    SIG_CLAMEXE,
    SIG_WORM,
    TESTFILES,
    WORM_PAYLOAD,
    with_attachment,
)
from tests.services import MESSAGES, Clamd

pytest_plugins = ["tests.scanner_fixtures"]  # real clamd and spamd, session-wide


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the cache -----------------------------------------------------------------------------

def test_lru_evicts_least_recently_used() -> None:
    cache: VerdictCache[str] = VerdictCache(max_entries=2)
    cache.put("a", "A", ttl=60)
    cache.put("b", "B", ttl=60)
    assert cache.get("a") == "A"  # a is now the most recent
    cache.put("c", "C", ttl=60)
    assert cache.get("b") is None and cache.get("a") == "A" and cache.get("c") == "C"
    assert len(cache) == 2 and cache.stats().evictions == 1


def test_entries_expire() -> None:
    clock = Clock()
    cache: VerdictCache[str] = VerdictCache(clock=clock)
    cache.put("k", "v", ttl=10)
    clock.now += 9.9
    assert cache.get("k") == "v"
    clock.now += 0.1
    assert cache.get("k") is None and len(cache) == 0
    cache.put("zero", "v", ttl=0)
    assert cache.get("zero") is None


def test_versioned_entries_die_with_their_version() -> None:
    cache: VerdictCache[str] = VerdictCache()
    cache.put("clean", "", ttl=60, version="ClamAV 1.4.6/27000")
    cache.put("virus", "Sig", ttl=60)
    assert cache.get("clean", "ClamAV 1.4.6/27000") == ""
    assert cache.get("virus", "ClamAV 1.4.6/27001") == "Sig"  # unversioned: still valid
    assert cache.get("clean", "ClamAV 1.4.6/27001") is None
    assert cache.get("clean", "ClamAV 1.4.6/27000") is None  # dropped, not hidden


def test_hit_rate_is_counted() -> None:
    cache: VerdictCache[int] = VerdictCache()
    cache.put("x", 1, ttl=60)
    for _ in range(3):
        cache.get("x")
    cache.get("y")
    s = cache.stats()
    assert (s.hits, s.misses, s.size) == (3, 1, 1) and s.hit_rate == 0.75


# -- MIME leaves ---------------------------------------------------------------------------

def test_leaves_are_decoded_payloads_even_when_forwarded_or_uuencoded() -> None:
    clamzip = digest((TESTFILES / "clam.zip").read_bytes())
    clamexe = digest((TESTFILES / "clam.exe").read_bytes())
    fwd = split_parts((MESSAGES / "forward-clam-zip.eml").read_bytes())
    assert clamzip in {leaf.digest for leaf in fwd.leaves} and fwd.trustworthy
    uu = split_parts((MESSAGES / "clam-uu.eml").read_bytes().replace(b"\n", b"\r\n"))
    assert clamexe in {leaf.digest for leaf in uu.leaves}


def test_body_digest_ignores_headers_and_line_endings() -> None:
    raw = (MESSAGES / "clean.eml").read_bytes()
    other = b"Subject: something else\nX-Extra: 1\n" + raw.split(b"\n\n", 1)[1].join([b"\n", b""])
    assert body_digest(raw) == body_digest(raw.replace(b"\n", b"\r\n"))
    assert body_digest(raw) == body_digest(other)
    assert body_digest(raw) != body_digest(raw + b"tail\n")


def test_defective_mime_is_not_trusted() -> None:
    broken = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
              b"Content-Type: text/plain\r\n\r\nno closing boundary\r\n")
    assert split_parts(broken).trustworthy is False


# -- outbreak through clamd ----------------------------------------------------------------

def worm_copy(i: int) -> bytes:
    """What a mass mailer sends: same payload, new sender, recipient, boundary, cover text."""
    return with_attachment(
        f"Status {i}", f"Mail transaction failed. Partial message is available. #{i}",
        WORM_PAYLOAD, f"doc{i % 7}.pif", boundary=f"----=_NextPart_{i:06d}",
        sender=f"user{i}@infected{i % 13}.example", rcpt=f"rcpt{i}@example.org",
        msgid=f"m{i}").encode().replace(b"\n", b"\r\n")


def cached_filter(address: str, **kw: object) -> ClamAVFilter:
    return ClamAVFilter(ClamdClient(address, timeout=10), cache=VerdictCache(10_000), **kw)  # type: ignore[arg-type]


def test_thousand_worm_copies_cost_one_attachment_scan(own_clamd: Clamd) -> None:
    async def go() -> list:
        f = cached_filter(own_clamd.address)
        out = []
        for i in range(1000):
            out.append(await f.check(Context(client=f"198.51.100.{i % 250}",
                                             rcpts=[f"rcpt{i}@example.org"],
                                             content=worm_copy(i))))
        return [f, out]

    f, verdicts = asyncio.run(go())
    assert all(v is not None and v.action == Action.REJECT and v.detail.startswith(SIG_WORM)
               for v in verdicts)
    # First copy: the message as a whole, then its attachment alone to learn which leaf
    # carries the worm. Every later copy: no clamd round trip at all.
    assert f.client.scans == 2
    assert own_clamd.wait_scans(2) == 2
    stats = f.stats()
    assert (stats.messages, stats.cache_hits) == (1000, 999) and stats.hit_rate == 0.999
    # Per copy, body, preamble and cover text miss (never cached: every copy is infected)
    # and the attachment hits.
    assert f.cache.stats().hit_rate > 0.2


def test_known_virus_refused_while_clamd_is_down(own_clamd: Clamd) -> None:
    async def go() -> tuple:
        f = cached_filter(own_clamd.address)
        first = await f.check(Context(client="x", content=worm_copy(1)))
        await asyncio.to_thread(own_clamd.stop)
        again = await f.check(Context(client="x", content=worm_copy(2)))
        unknown = await f.check(Context(client="x", content=(
            MESSAGES / "clean.eml").read_bytes()))
        return first, again, unknown

    first, again, unknown = asyncio.run(go())
    assert first.action == Action.REJECT and again.action == Action.REJECT
    # A message the cache does not know still needs clamd: 451, never a silent pass.
    assert unknown is not None and unknown.reply.startswith("451 4.3.0")


def test_clean_attachment_cached_until_database_changes(clamd: Clamd) -> None:
    attachment = hashlib.sha256(b"quarterly report").digest() * 100

    def msg(i: int) -> Context:
        return Context(client="x", content=with_attachment(
            f"Report {i}", "Report attached.", attachment, "report.bin",
            boundary=f"b{i}").encode())

    sent: list[int] = []  # bytes of each scan

    async def go() -> None:
        f = cached_filter(clamd.address, version_interval=0)
        instream = f.client.instream

        async def counted(data: bytes) -> str | None:
            sent.append(len(data))
            return await instream(data)

        f.client.instream = counted  # type: ignore[method-assign]
        assert await f.check(msg(1)) is None
        # exact repeat: every leaf known clean, only the header blocks are scanned
        assert await f.check(msg(1)) is None
        assert f.cache_hits == 1

        async def new_db() -> str:
            return "ClamAV 1.4.6/99999/after reload"

        f.client.version = new_db  # type: ignore[method-assign]
        assert await f.check(msg(1)) is None

    asyncio.run(go())
    whole = len(msg(1).content)
    assert sent[0] == sent[2] == whole and len(sent) == 3
    assert sent[1] < whole - len(attachment)  # the skeleton: no attachment in it


def test_new_cover_text_with_known_clean_attachment_is_scanned(clamd: Clamd) -> None:
    """Clean hits need every leaf known: a new text part must still go to clamd."""
    async def go() -> int:
        f = cached_filter(clamd.address)
        for text in ("one", "two"):
            await f.check(Context(client="x", content=with_attachment(
                "x", text, b"same attachment" * 50, "a.bin").encode()))
        return f.client.scans

    assert asyncio.run(go()) == 2


def test_zip_worm_attachment_cached_across_forwarding(clamd: Clamd) -> None:
    """A copy of clam.zip forwarded inside message/rfc822 hits the leaf cached from a
    direct copy: the digest is of the decoded leaf, wherever it sits."""
    async def go() -> tuple:
        f = cached_filter(clamd.address)
        direct = await f.check(Context(client="x", content=(
            MESSAGES / "clam-zip.eml").read_bytes()))
        scans = f.client.scans
        fwd = await f.check(Context(client="x", content=(
            MESSAGES / "forward-clam-zip.eml").read_bytes()))
        return direct, fwd, scans, f.client.scans

    direct, fwd, scans, after = asyncio.run(go())
    assert direct.detail.startswith(SIG_CLAMEXE) and fwd.detail.startswith(SIG_CLAMEXE)
    assert after == scans


@pytest.mark.parametrize("content", [b"", b"Subject: empty body\r\n\r\n"])
def test_degenerate_messages_are_scanned_not_cached(clamd: Clamd, content: bytes) -> None:
    f = cached_filter(clamd.address)
    assert asyncio.run(f.check(Context(client="x", content=content))) is None
    assert f.client.scans == 1
