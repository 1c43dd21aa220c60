"""End-of-DATA virus check through clamd's INSTREAM command, with the outbreak cache.

Why a small native asyncio client and not pyclamd: pyclamd is blocking, so it would need a
thread pool sized to clamd's threads, and a thread stuck on a hung clamd cannot be
cancelled: the SMTP session gives up but the thread (and its pool slot) stays stuck until
the socket times out. The clamd protocol is tiny (`zINSTREAM\\0`, 4-byte big-endian chunk
lengths, a zero-length chunk, a NUL-terminated reply), so here every scan is a coroutine on
the relay's loop: no threads, one `asyncio.timeout` covers connect, send and reply,
cancellation closes the socket, and a semaphore keeps in-flight scans within clamd's
MaxThreads instead of piling into its queue.

Verdicts: a virus is `554 5.7.1 Virus found: <signature>` (reason `virus`, detail the
signature). clamd down, refusing, slow or talking nonsense goes to `on_error`
(filters/failure.py): `451 4.3.0` by default, or an ACCEPT carrying an `X-Floodgate-Unscanned`
header. Several clamd addresses are used in turn (filters/endpoints.py, through ClamdPool).
A message over the stream limit follows `on_oversize`. A message clamd could not look at in
full (past its MaxRecursion, MaxScanSize or MaxFileSize: `Heuristics.Limits.Exceeded.*`, which
clamd says only with `AlertExceedsMax yes`) follows `on_limits`: `554 5.7.0` by default
(reason `scan_limits`), never cached, never taken for clean. So does a zip attachment whose own
directory declares more than clamd would look at (a member over `max_file_size`, members
over `max_scan_size` in all, a zip bomb's ratio), or that cannot be read: clamd cuts such a
member short without a word (filters/archive.py); these limits must be clamd.conf's.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from filters.archive import zip_excess
from filters.base import Action, Context, Stage, Verdict, verdict_note
from filters.endpoints import DOWN_FOR, Rotation, parse_address
from filters.failure import FailurePolicy
from filters.headers import head_end
from filters.mime import INLINE_STEPS, Parts, TooComplex, split_parts
from filters.offload import split_in_process, split_parts_in_process
from filters.verdict_cache import VerdictCache

log = logging.getLogger("floodgate.clamav")

CHUNK = 64 * 1024
# Scans spent finding which leaf of an infected message carries the virus, at most (then one
# of the header blocks and one of the body, see ClamAVFilter._remember).
MAX_ATTRIBUTION_SCANS = 8
# clamd's name for "not scanned in full": MaxRecursion, MaxScanSize, MaxFileSize, ...
LIMITS_PREFIX = "Heuristics.Limits.Exceeded"
# Parsing a big message costs real CPU; above this size it happens off the event loop (and
# so does a smaller one's whose structure costs more than filters.mime.INLINE_STEPS).
PARSE_INLINE_LIMIT = 1024 * 1024
# clamd's own defaults (ClamAV 1.x MaxFileSize, MaxScanSize)
MAX_FILE_SIZE = 100 << 20
MAX_SCAN_SIZE = 400 << 20

OversizePolicy = Literal["tempfail", "accept", "reject"]


def past_limits(sig: str | None) -> bool:
    """Whether clamd's answer means "stopped at a limit", not "found a virus"."""
    return sig is not None and sig.startswith(LIMITS_PREFIX)


class ClamdError(Exception):
    """clamd could not give a verdict: down, refused, timed out, or answered garbage."""


# The smallest clamd StreamMaxLength we read a mid-stream hang-up as: below it a reset
# with no reply is an error (on_error), never a permanent "too large" (on_oversize).
MIN_STREAM_LIMIT = 64 * 1024


class ClamdSizeLimit(ClamdError):
    """clamd refused the stream as over its StreamMaxLength."""


class ClamdUnavailable(ClamdError):
    """No connection to clamd could be made (refused, no route, no socket): nothing sent."""


class ClamdTimeout(ClamdError):
    """clamd (or a free slot for it) did not answer within the timeout."""


class ClamdClient:
    """One clamd endpoint. Every call opens its own connection (clamd serves one command per
    connection unless IDSESSION is used, and sessions pin a clamd thread)."""

    def __init__(self, address: str, timeout: float = 30.0, concurrency: int = 10,
                 chunk_size: int = CHUNK) -> None:
        self.address = address
        self.endpoint = parse_address(address)
        self.timeout = timeout
        self.chunk_size = chunk_size
        self._slots = asyncio.Semaphore(concurrency)
        self.scans = 0  # INSTREAM requests sent (the outbreak tests count these)
        self.up = True  # False while the last command could not connect or timed out

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.endpoint, str):
            return await asyncio.open_unix_connection(self.endpoint)
        host, port = self.endpoint
        return await asyncio.open_connection(host, port)

    async def _command(self, payload: bytes | None, command: bytes) -> str:
        """Send `z<command>\\0` (and a stream), return the NUL-terminated reply."""
        try:
            # The wait for a free slot counts too: an overloaded clamd is a tempfail.
            async with asyncio.timeout(self.timeout), self._slots:
                try:
                    reader, writer = await self._open()
                except OSError as e:  # nothing was sent: another clamd may take it
                    self.up = False
                    raise ClamdUnavailable(f"{type(e).__name__}: {e.strerror or e}") from e
                try:
                    reply = await self._exchange(reader, writer, payload, command)
                    self.up = True
                    return reply
                finally:
                    writer.close()
        except TimeoutError as e:
            self.up = False
            raise ClamdTimeout(f"timeout after {self.timeout:g}s") from e
        except OSError as e:
            raise ClamdError(f"{type(e).__name__}: {e.strerror or e}") from e

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        payload: bytes | None, command: bytes) -> str:
        writer.write(b"z" + command + b"\0")
        cut_short = False
        if payload is not None:
            view = memoryview(payload)
            sent = 0
            try:
                for i in range(0, len(view), self.chunk_size):
                    chunk = view[i:i + self.chunk_size]
                    writer.write(struct.pack(">I", len(chunk)))
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
                writer.write(struct.pack(">I", 0))
                await writer.drain()
            except (BrokenPipeError, ConnectionResetError):
                # clamd hangs up mid-stream when the size limit is hit (its reply, if any,
                # is still waiting in our receive buffer), but only after that many bytes:
                # a hang-up sooner is a crash or a stranger, not a size limit.
                cut_short = sent >= MIN_STREAM_LIMIT
        try:
            raw = await reader.readuntil(b"\0")
        except asyncio.IncompleteReadError as e:
            raw = e.partial
        except (BrokenPipeError, ConnectionResetError):
            if not cut_short:
                raise
            # The reset overtook clamd's reply; hanging up mid-stream is what clamd does
            # at StreamMaxLength and nowhere else.
            raise ClamdSizeLimit("INSTREAM size limit exceeded (connection reset)") from None
        except asyncio.LimitOverrunError as e:
            raise ClamdError("reply too long") from e
        reply = raw.rstrip(b"\0").decode("utf-8", "replace").strip()
        if not reply:
            raise ClamdError("connection closed without a reply")
        return reply

    async def instream(self, data: bytes) -> str | None:
        """The signature name if clamd found one, None if clean."""
        self.scans += 1
        reply = await self._command(data, b"INSTREAM")
        return parse_scan_reply(reply)

    async def version(self) -> str:
        reply = await self._command(None, b"VERSION")
        if not reply.startswith("ClamAV "):
            raise ClamdError(f"unexpected VERSION reply {reply[:80]!r}")
        return reply

    async def ping(self) -> bool:
        try:
            return await self._command(None, b"PING") == "PONG"
        except ClamdError:
            return False

    def reachable(self) -> dict[str, bool]:
        """{address: whether the last command reached it} (see Rotation.reachable)."""
        return {self.address: self.up}


class ClamdPool:
    """Several clamd endpoints behind ClamdClient's interface, for a site that adds scanner
    hosts when one is not enough: used in turn, skipped while down (filters/endpoints.py).
    ClamdError only when no endpoint could answer."""

    def __init__(self, clients: list[ClamdClient], down_for: float = DOWN_FOR,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clients = clients
        self.rotation = Rotation(clients, service="clamd", unreachable=(ClamdUnavailable,),
                                 hung=(ClamdTimeout,), down_for=down_for, clock=clock)
        self.timeout = clients[0].timeout
        self.address = self.rotation.address

    @property
    def scans(self) -> int:
        return sum(c.scans for c in self.clients)

    def reachable(self) -> dict[str, bool]:
        return self.rotation.reachable()

    async def instream(self, data: bytes) -> str | None:
        try:
            return await self.rotation.call(lambda client: client.instream(data))
        except ClamdUnavailable as e:
            raise ClamdError(f"no clamd reachable ({self.address}): {e}") from e

    async def version(self) -> str:
        try:
            return await self.rotation.call(lambda client: client.version())
        except ClamdUnavailable as e:
            raise ClamdError(f"no clamd reachable ({self.address}): {e}") from e

    async def ping(self) -> bool:
        """True if any endpoint answers."""
        for client in self.clients:
            if await client.ping():
                return True
        return False


def parse_scan_reply(reply: str) -> str | None:
    """`stream: OK` -> None; `stream: Sig FOUND` -> "Sig"; errors and garbage raise."""
    if reply == "stream: OK":
        return None
    if reply.startswith("stream: ") and reply.endswith(" FOUND"):
        sig = reply[len("stream: "):-len(" FOUND")].strip()
        if sig and "\n" not in sig:
            return sig
    if "size limit exceeded" in reply:
        raise ClamdSizeLimit(reply)
    raise ClamdError(f"unexpected reply {reply[:120]!r}")


@dataclass(frozen=True, slots=True)
class ClamAVStats:
    messages: int
    scans: int
    # messages whose leaves the cache answered: no scan of their content (a clean one
    # still has its header blocks scanned: a few hundred bytes)
    cache_hits: int
    cache_size: int

    @property
    def hit_rate(self) -> float:
        return self.cache_hits / self.messages if self.messages else 0.0


class ClamAVFilter:
    """The DATA-stage virus check. `cache` turns on outbreak mode (see filters/mime.py):
    infected leaves are remembered for `infected_ttl`, clean ones for `clean_ttl` and only
    while clamd's VERSION string (which carries the signature database version) is the same.

    Nothing outside the leaves is ever answered from the cache: a verdict keyed by content
    must hold for every message that carries that content, whatever else it carries. So a
    message whose leaves are all known clean still has its skeleton (header blocks, boundary
    lines) scanned, and an infection is cached only under the leaf (or body) that carries it
    by itself, never under a body whose headers carried it.
    """

    name = "clamav"
    stage = Stage.DATA

    def __init__(
        self,
        client: ClamdClient,
        *,
        on_error: Action = Action.TEMPFAIL,
        max_size: int = 0,
        on_oversize: OversizePolicy = "reject",
        on_limits: OversizePolicy = "reject",
        max_file_size: int = MAX_FILE_SIZE,
        max_scan_size: int = MAX_SCAN_SIZE,
        cache: VerdictCache[str] | None = None,
        infected_ttl: float = 3600.0,
        clean_ttl: float = 600.0,
        version_interval: float = 30.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.client = client
        self.on_error = FailurePolicy(self.name, on_error, self.stage, "virus scan")
        # Outer limit for the pipeline (the same on_error either way); the client's own
        # timeout fires first, so the log says which part of the scan hung.
        self.timeout = client.timeout * (3 + MAX_ATTRIBUTION_SCANS) + 5
        self.max_size = max_size
        self.on_oversize = on_oversize
        self.on_limits = on_limits
        self.max_file_size = max_file_size
        self.max_scan_size = max_scan_size
        self.cache = cache
        self.infected_ttl = infected_ttl
        self.clean_ttl = clean_ttl
        self.version_interval = version_interval
        self._clock = clock or time.monotonic
        self._db_version: str | None = None
        self._version_checked = float("-inf")
        self.messages = 0
        self.cache_hits = 0
        self.offloaded = 0  # small messages split off the loop for their structure

    def reachable(self) -> dict[str, bool]:
        """{clamd address: whether the last command reached it}, for the scanner-up gauge."""
        return self.client.reachable()

    # -- verdicts ----------------------------------------------------------------------
    @staticmethod
    def virus(sig: str) -> Verdict:
        return Verdict.reject(554, "5.7.1", "virus", f"Virus found: {sig}", detail=sig)

    def failed(self, why: str) -> Verdict:
        verdict = self.on_error.failed(why)
        assert verdict is not None  # a DATA check: never "no opinion"
        return verdict

    def oversize(self, why: str) -> Verdict:
        if self.on_oversize == "reject":
            return Verdict.reject(552, "5.3.4", "scan_oversize",
                                  "Message too large to scan for viruses", detail=why)
        if self.on_oversize == "accept":
            return self.on_error.unscanned(why)
        return self.on_error.tempfail(why, reason="scan_oversize",
                                      text="Message too large to scan now, try again later")

    def limits(self, sig: str) -> Verdict:
        """clamd stopped at one of its limits (nesting, scan size, file size): the message
        was not looked at in full. 5.7.0 (RFC 3463: other or undefined security status), not
        5.3.4: a 10 KB zip nested 17 deep is not too big for anything, its security status
        is what could not be established; amavisd-new and Postfix refuse it as 554 5.7.0."""
        if self.on_limits == "reject":
            return Verdict.reject(554, "5.7.0", "scan_limits",
                                  "Message exceeds virus scanner limits", detail=sig)
        if self.on_limits == "accept":
            return self.on_error.unscanned(sig, text="Accepted without full virus scan")
        return self.on_error.tempfail(
            sig, reason="scan_limits", text="Message exceeds virus scanner limits, try again later")

    def found(self, sig: str | None) -> Verdict | None:
        """The verdict for what clamd said about the message."""
        if sig is None:
            return None
        return self.limits(sig) if past_limits(sig) else self.virus(sig)

    # -- the check ---------------------------------------------------------------------
    async def check(self, ctx: Context) -> Verdict | None:
        verdict, source = await self._check(ctx.content)
        what = ("clean" if verdict is None else
                verdict.detail if verdict.reason == "virus" else verdict.reason)
        ctx.notes.append(verdict_note(self.name, what, source))
        return verdict

    async def _check(self, content: bytes) -> tuple[Verdict | None, str]:
        """The verdict, and whether the cache gave it (`cached`) or clamd (`scanned`)."""
        self.messages += 1
        if self.max_size and len(content) > self.max_size:
            return self.oversize(f"{len(content)} bytes over limit {self.max_size}"), "unscanned"
        # Split even without the cache: the zip check needs the decoded leaves.
        parts = await self._split(content)
        excess = self._archive_excess(parts)
        if excess is not None:  # clamd would cut it short and say OK: never ask it
            return self.limits(excess), "unscanned"
        version: str | None = None
        if self.cache is not None:
            version = await self.db_version()
            hit = self._lookup(parts, version)
            if hit is not None:
                self.cache_hits += 1
                if hit:
                    return self.virus(hit), "cached"
                # Every leaf is known clean; what lies outside them is not: scan it now.
                sig, failure = await self._scan(parts.skeleton)
                return failure or self.found(sig), "cached"
        sig, failure = await self._scan(content)
        if failure is not None:
            return failure, "scanned"
        if self.cache is not None and not past_limits(sig):  # a partial scan teaches nothing
            await self._remember(parts, sig, version, content)
        return self.found(sig), "scanned"

    def _archive_excess(self, parts: Parts) -> str | None:
        """Why a zip leaf is past clamd's limits by its own directory, None if none is."""
        for summary in parts.archives:
            why = zip_excess(summary, self.max_file_size, self.max_scan_size)
            if why is not None:
                return why
        return None

    async def _scan(self, data: bytes) -> tuple[str | None, Verdict | None]:
        """(clamd's signature or None, None), or (None, the verdict) if clamd gave none."""
        try:
            return await self.client.instream(data), None
        except ClamdSizeLimit as e:
            return None, self.oversize(str(e))
        except ClamdError as e:
            log.warning("clamd scan failed address=%s error=%s", self.client.address, e)
            return None, self.failed(str(e))

    async def _split(self, content: bytes) -> Parts:
        if len(content) > PARSE_INLINE_LIMIT:  # digests only: no attribution scans for it
            return await split_in_process(content)
        try:
            return split_parts(content, INLINE_STEPS)
        except TooComplex:  # thousands of parts or header lines: not on the event loop
            self.offloaded += 1
            return await split_parts_in_process(content)

    async def db_version(self) -> str | None:
        """clamd's VERSION line, asked at most every `version_interval` seconds."""
        now = self._clock()
        if now - self._version_checked >= self.version_interval:
            self._version_checked = now
            try:
                self._db_version = await self.client.version()
            except ClamdError as e:
                log.warning("clamd VERSION failed address=%s error=%s", self.client.address, e)
                self._db_version = None
        return self._db_version

    def _lookup(self, parts: Parts, version: str | None) -> str | None:
        """A signature if any leaf is known infected, "" if every leaf is known clean
        under the current database, None when clamd has to look."""
        assert self.cache is not None
        outbreak = self.cache.get(parts.body_digest)
        if outbreak:
            return outbreak
        if not parts.leaves:
            return None
        all_clean = parts.trustworthy and version is not None
        for leaf in parts.leaves:
            cached = self.cache.get(leaf.digest, version)
            if cached:
                return cached
            if cached is None:
                all_clean = False
        return "" if all_clean else None

    async def _remember(self, parts: Parts, sig: str | None, version: str | None,
                        content: bytes) -> None:
        """Cache what clamd said. For an infected message, find which leaf carries the
        virus (one scan per leaf, paid once per outbreak) so later copies with new cover
        text still hit. If no single leaf reproduces it: when the skeleton does, the virus
        is in the headers and nothing more is cached (keying the body would refuse anyone
        else's message with that body); otherwise the body is keyed only if the body alone
        reproduces it."""
        if self.cache is None:
            return
        if sig is None:
            if version is not None and parts.trustworthy:
                for leaf in parts.leaves:
                    self.cache.put(leaf.digest, "", self.clean_ttl, version)
            return
        # Attachments first: that is where worms travel; the cover text is the last suspect.
        suspects = sorted((leaf for leaf in parts.leaves if leaf.payload),
                          key=lambda leaf: leaf.content_type.startswith("text/"))
        for leaf in suspects[:MAX_ATTRIBUTION_SCANS]:
            try:
                leaf_sig = await self.client.instream(leaf.payload)
            except ClamdError:
                return
            if past_limits(leaf_sig):  # not looked at in full: neither clean nor infected
                continue
            if leaf_sig:
                self.cache.put(leaf.digest, leaf_sig, self.infected_ttl)
                return
            if version is not None:  # scanned in full, alone, and clean
                self.cache.put(leaf.digest, "", self.clean_ttl, version)
        try:
            if await self._infected(parts.skeleton):
                return  # in the headers: the body alone is no reason to refuse anything
            body_sig = await self._infected(content[head_end(content):])
        except ClamdError:
            return
        if body_sig:
            self.cache.put(parts.body_digest, body_sig, self.infected_ttl)

    async def _infected(self, data: bytes) -> str | None:
        """The signature clamd finds in `data` alone; None if clean or past its limits."""
        sig = await self.client.instream(data)
        return None if past_limits(sig) else sig

    def stats(self) -> ClamAVStats:
        return ClamAVStats(self.messages, self.client.scans, self.cache_hits,
                           len(self.cache) if self.cache is not None else 0)
