"""The scenarios of the performance issue (1-7), of hostile single clients (8) and of the
outbreak replayed against Postfix + amavisd-new (9), each with its baseline from the same run.

Every scenario returns `Row`s; `run.py` prints them and writes the README table. Relays get
the demo configuration adapted by `services.relay_config` (own port, store, spool; scoring off
so that it never blocks the load generator; loopback not protected so scenario 2 can block a
127/8 source).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from relay.config.store import StoreConfig
from scripts.benchlib import loadgen as lg
from scripts.benchlib.cpuquota import CpuQuota
from scripts.benchlib.procstat import cpu_seconds, rss_bytes, tree_cpu_seconds, tree_rss_bytes
from scripts.benchlib.services import PY, ROOT, Baseline, Relay, Sink, free_port, relay_config

GEN_SOURCES = lg.source_addresses(net=10)  # scenario 1, 3-6 clients: 127.10.x.y
BLOCKED_NET = "127.20.0.0/24"  # scenario 2: blocked with `floodgate block add`
BLOCKED_SOURCES = [f"127.20.0.{i}" for i in range(1, 251)]
QUOTA = 0.5  # cores per relay process in the scaling rows (scripts/benchlib/cpuquota.py)


@dataclass
class Row:
    scenario: str
    measurement: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Settings:
    workdir: Path
    quick: bool

    @property
    def seconds(self) -> float:
        return 4.0 if self.quick else 8.0


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}/s"


def _ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def load(port: int, steps, *, concurrency: int, duration: float, sources=None,
         limit: int = 0, warmup: float = 1.0) -> lg.LoadResult:
    import uvloop

    return uvloop.run(lg.drive("127.0.0.1", port, steps, concurrency=concurrency,
                               duration=duration, warmup=warmup, sources=sources,
                               limit=limit))


def measured(pids: list[int], fn):  # type: ignore[no-untyped-def]
    """Run `fn()`; returns (its result, CPU seconds the `pids` used meanwhile)."""
    before = sum(cpu_seconds(p) for p in pids)
    result = fn()
    return result, sum(cpu_seconds(p) for p in pids) - before


@contextlib.contextmanager
def relay(s: Settings, name: str, *, workers: int = 1, uvloop: bool = True,
          setup: list[list[str]] | None = None, cores: float | None = None,
          **config: object) -> Iterator[Relay]:
    """A relay for one measurement; `cores`: held to that much CPU (scripts/benchlib/
    cpuquota.py), all its processes together."""
    workdir = s.workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    path = relay_config(workdir / "relay.toml", port=port, workdir=workdir, **config)  # type: ignore[arg-type]
    quota = CpuQuota(f"floodgate-bench-{name}", cores).create() if cores else None
    r = Relay(path, port, workers=workers, uvloop=uvloop, quota=quota)
    for args in setup or []:
        r.cli(*args)
    r.start()
    try:
        yield r
    finally:
        r.stop()


ALIASES = ["aliases", "import", str(ROOT / "fixtures" / "aliases.txt"), "--format", "postfix"]


# -- scenario 1 and 2: sessions per second ----------------------------------------------------

def _sessions(port: int, pids: list[int], steps, sources, seconds: float  # type: ignore[no-untyped-def]
              ) -> tuple[lg.LoadResult, float]:
    """One closed-loop run: the load result and the CPU seconds `pids` used."""
    result, cpu = measured(pids, lambda: load(port, steps, concurrency=32, duration=seconds,
                                              sources=sources))
    if result.errors:
        print(f"    {result.errors} failed sessions, first: {result.first_error}")
    return result, cpu


def _merged(parts: list[tuple[lg.LoadResult, float]]) -> tuple[lg.LoadResult, float]:
    """Rounds of one variant as one result, and its CPU per session."""
    out = lg.LoadResult()
    for r, _ in parts:
        out.ok += r.ok
        out.errors += r.errors
        out.seconds += r.seconds
        out.latencies += r.latencies
        out.first_error = out.first_error or r.first_error
    return out, sum(cpu for _, cpu in parts) / max(1, out.ok)


ROUNDS = 3  # scenarios 1-2: every variant measured in turn, three times over


def scenario_1_2(s: Settings, which: str) -> list[Row]:
    """1: dictionary attack; 2: blocked host at connect. Baseline: bare aiosmtpd."""
    dictionary = which == "1"
    steps = lg.dictionary_steps if dictionary else lg.blocked_steps
    sources = GEN_SOURCES if dictionary else BLOCKED_SOURCES
    label = "sessions" if dictionary else "refusals"
    title = "1 dictionary attack" if dictionary else "2 blocked host at connect"
    setup = [] if dictionary else [["block", "add", BLOCKED_NET, "--for", "1d",
                                    "--reason", "bench"]]
    rows: list[Row] = []
    variants: list[tuple[str, int, bool, float | None]] = [
        ("baseline", 1, True, None), ("relay", 1, True, None), ("relay", 1, False, None),
        ("relay", 2, True, None)]
    if not s.quick:
        variants.insert(1, ("baseline", 1, False, None))
    no_quota = CpuQuota.available()
    if no_quota is None:  # the same two, each process held to half a core
        variants += [("relay", 1, True, QUOTA), ("relay", 2, True, 2 * QUOTA)]
    parts: dict[str, list[tuple[lg.LoadResult, float]]] = {}
    with contextlib.ExitStack() as running:  # all started first, then measured in turns
        targets: dict[str, tuple[int, list[int]]] = {}
        for kind, workers, uv, cores in variants:
            key = f"{kind} w{workers} {'uvloop' if uv else 'asyncio'}" + (
                f" {cores}" if cores else "")
            if kind == "baseline":
                b = Baseline(s.workdir, "rcpt" if dictionary else "connect", uvloop=uv)
                running.callback(b.stop)
                targets[key] = (b.port, [b.proc.pid])
            else:
                name = f"s{which}-w{workers}-{'uv' if uv else 'aio'}" + (
                    f"-q{workers}" if cores else "")
                r = running.enter_context(relay(s, name, workers=workers, uvloop=uv,
                                                setup=setup, cores=cores))
                targets[key] = (r.port, r.pids)
        # Interleaved rounds: on a shared host a slow minute hits every variant alike,
        # not only the one that happened to run then.
        for n in range(ROUNDS):
            for key, (port, pids) in targets.items():
                print(f"  scenario {which}: {key} (round {n + 1} of {ROUNDS})", flush=True)
                parts.setdefault(key, []).append(
                    _sessions(port, pids, steps, sources, s.seconds / 2))
    results = {key: _merged(p) for key, p in parts.items()}
    base, base_cpu = results["baseline w1 uvloop"]
    one, one_cpu = results["relay w1 uvloop"]
    aio, aio_cpu = results["relay w1 asyncio"]
    two, two_cpu = results["relay w2 uvloop"]
    target_rate = 1000 if dictionary else 5000
    rows.append(Row(title, f"bare aiosmtpd baseline, uvloop ({label}/s; p50 / p99)",
                    f"{_fmt_rate(base.rate)}; {_ms(base.p50)} / {_ms(base.p99)}",
                    note=f"server CPU {base_cpu * 1e6:.0f} us/session"))
    if "baseline w1 asyncio" in results:
        b_aio, _ = results["baseline w1 asyncio"]
        rows.append(Row(title, "bare aiosmtpd baseline, asyncio loop",
                        _fmt_rate(b_aio.rate), _fmt_rate(base.rate), _ratio(b_aio.rate, base.rate)))
    met_rate = one.rate >= target_rate and (not dictionary or one.rate >= 0.8 * base.rate)
    rows.append(Row(title, f"relay, 1 process, uvloop ({label}/s; p50 / p99)",
                    f"{_fmt_rate(one.rate)}; {_ms(one.p50)} / {_ms(one.p99)}",
                    _fmt_rate(base.rate), _ratio(one.rate, base.rate),
                    f">= {target_rate:,}/s" + (" and >= 0.8x" if dictionary else ""), met_rate,
                    f"relay CPU {one_cpu * 1e6:.0f} us/session"))
    rows.append(Row(title, "relay, 1 process, asyncio loop (uvloop off)",
                    f"{_fmt_rate(aio.rate)}; {_ms(aio.p50)} / {_ms(aio.p99)}",
                    _fmt_rate(one.rate), _ratio(aio.rate, one.rate),
                    note=f"relay CPU {aio_cpu * 1e6:.0f} us/session"))
    rows.append(Row(title, "relay, --workers 2, uvloop",
                    f"{_fmt_rate(two.rate)}; {_ms(two.p50)} / {_ms(two.p99)}",
                    _fmt_rate(one.rate), _ratio(two.rate, one.rate), ">= 1.7x",
                    two.rate >= 1.7 * one.rate,
                    f"relay CPU {two_cpu * 1e6:.0f} us/session; no idle core for the second "
                    "worker (the generator shares both)"))
    if no_quota is not None:
        rows.append(Row(title, "relay, --workers 2 against 1, held to half a core each",
                        "not measured", note=f"CPU quota: {no_quota}"))
        return rows
    q1, q1_cpu = results[f"relay w1 uvloop {QUOTA}"]
    q2, q2_cpu = results[f"relay w2 uvloop {2 * QUOTA}"]
    rows.append(Row(title, f"relay, 1 process held to {QUOTA} core (cgroup CPU quota)",
                    f"{_fmt_rate(q1.rate)}; {_ms(q1.p50)} / {_ms(q1.p99)}",
                    note=f"relay CPU {q1_cpu * 1e6:.0f} us/session"))
    rows.append(Row(title, f"relay, --workers 2 held to {2 * QUOTA} cores (half each)",
                    f"{_fmt_rate(q2.rate)}; {_ms(q2.p50)} / {_ms(q2.p99)}",
                    _fmt_rate(q1.rate), _ratio(q2.rate, q1.rate), ">= 1.7x",
                    q2.rate >= 1.7 * q1.rate,
                    f"relay CPU {q2_cpu * 1e6:.0f} us/session; scaling with the CPU given, "
                    "the generator keeps the rest"))
    return rows


# -- scenario 3: clean mail end to end -------------------------------------------------------

CLEAN_WORDS = ("meeting", "minutes", "schedule", "review", "relay", "configuration",
               "results", "agreed", "update", "team", "project", "report", "budget",
               "quarter", "planning", "notes", "office", "week")


def clean_message(n: int, size: int = 3072) -> bytes:
    rnd = random.Random(n)
    head = (f"From: Alice <alice@sender.example>\r\nTo: <bob@example.org>\r\n"
            f"Subject: Notes {n}: {rnd.choice(CLEAN_WORDS)} {rnd.choice(CLEAN_WORDS)}\r\n"
            f"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
            f"Message-ID: <bench-{n}-{rnd.getrandbits(40):x}@sender.example>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
    body = [f"Hi Bob,\r\n\r\nhere are the notes from meeting {n}.\r\n"]
    length = len(head) + len(body[0])
    while length < size:
        line = " ".join(rnd.choice(CLEAN_WORDS) for _ in range(11)).capitalize() + ".\r\n"
        body.append(line)
        length += len(line)
    body.append("\r\nThanks,\r\nAlice\r\n")
    return (head + "".join(body)).encode()


async def _direct_scans(clamd: str, spamd: str, messages: list[bytes], concurrency: int,
                        duration: float) -> tuple[int, float]:
    """clamd INSTREAM then spamd SYMBOLS for each message, `concurrency` at a time."""
    from filters.clamav import ClamdClient
    from filters.spamassassin import SpamAssassinFilter

    clam = ClamdClient(clamd, concurrency=4)
    spam = SpamAssassinFilter(spamd, concurrency=2)
    counter = iter(range(10**9))
    done = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            msg = messages[next(counter) % len(messages)]
            await clam.instream(msg)
            await spam.score(msg)
            done += 1

    for msg in messages[-4:]:  # warm-up, as the relay run has: spamd's first checks are slow
        await clam.instream(msg)
        await spam.score(msg)
    deadline = time.perf_counter() + duration
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - start


def scenario_3(s: Settings, scanners) -> list[Row]:  # type: ignore[no-untyped-def]
    clamd, spamd = scanners
    duration = 8.0 if s.quick else 20.0
    concurrency = 8
    messages = [clean_message(n) for n in range(20_000)]
    import uvloop

    sink = Sink(s.workdir)
    try:
        print("  scenario 3: relay", flush=True)
        with relay(s, "s3", clamd=clamd.address, spamd=spamd.address, clamav_cache=False,
                   spam_cache=False, delivery=True, sink_port=sink.port,
                   setup=[ALIASES]) as r:
            wire = [lg.to_wire(m) for m in messages[:10_000]]

            def steps(i: int) -> list[lg.Step]:
                return lg.mail_steps("alice@example.org", wire[i % len(wire)])

            scanner_pids = [clamd.proc.pid, spamd.proc.pid]
            before_scan = sum(tree_cpu_seconds(p) for p in scanner_pids)
            (res, relay_cpu) = measured(r.pids, lambda: load(
                r.port, steps, concurrency=concurrency, duration=duration,
                sources=GEN_SOURCES, warmup=2.0))
            scan_cpu = sum(tree_cpu_seconds(p) for p in scanner_pids) - before_scan
            accepted = res.ok
            deadline = time.monotonic() + 60
            while sink.count() < accepted and time.monotonic() < deadline:
                time.sleep(0.2)
            delivered = sink.count()
    finally:
        sink.stop()
    # After the relay's run, so that both find spamd's children forked and warm.
    print("  scenario 3: direct clamd+spamd", flush=True)
    n, secs = uvloop.run(_direct_scans(clamd.address, spamd.address, messages[10_000:],
                                       concurrency, duration))
    direct = n / secs
    if res.errors:
        print(f"    {res.errors} failed, first: {res.first_error}")
    rate = res.rate
    return [
        Row("3 clean mail end to end", "direct clamd INSTREAM + spamd SYMBOLS (msgs/s)",
            f"{direct:.1f}/s", note=f"{concurrency} at a time; spamd --max-children 2"),
        Row("3 clean mail end to end", "relay: accepted, scanned, spooled (msgs/s; p50 / p99)",
            f"{rate:.1f}/s; {_ms(res.p50)} / {_ms(res.p99)}", f"{direct:.1f}/s",
            _ratio(rate, direct), ">= 0.9x", rate >= 0.9 * direct,
            f"sink received {delivered} (measured {accepted} + warm-up); {res.errors} failed"),
        Row("3 clean mail end to end", "relay CPU per message (scanners excluded)",
            f"{relay_cpu / max(1, accepted) * 1000:.1f} ms",
            f"{scan_cpu / max(1, accepted) * 1000:.1f} ms", note="baseline column: clamd + "
            "spamd CPU per message in the same run"),
    ]


# -- scenario 4: worm outbreak ----------------------------------------------------------------

def worm_payload() -> bytes:
    from tests.make_fixtures import WORM_PAYLOAD

    return WORM_PAYLOAD + random.Random(7).randbytes(28_000)


def worm_message(n: int, payload: bytes) -> bytes:
    from tests.make_fixtures import with_attachment

    rnd = random.Random(n)
    subject = rnd.choice(["Mail Transaction Failed", "Error", "hello", "Delivery failed",
                          "status", "test"])
    text = rnd.choice(["The message contains Unicode characters and has been sent as a "
                       "binary attachment.", "Mail transaction failed. Partial message is "
                       "available.", f"The original message was included as attachment {n}."])
    return with_attachment(f"{subject} {n}", text, payload, rnd.choice(
        ["document.pif", "text.zip", "message.scr", "readme.exe"]),
        boundary=f"----=_NextPart_{n:06d}_{rnd.getrandbits(32):08X}",
        sender=f"user{n}@infected.example", rcpt="bob@example.org",
        msgid=f"{n}{rnd.getrandbits(32):x}").encode()


async def _raw_instream(address: str, message: bytes, concurrency: int,
                        duration: float) -> tuple[int, float]:
    from filters.clamav import ClamdClient

    client = ClamdClient(address, concurrency=concurrency)
    done = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            assert await client.instream(message)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - start


def scenario_4(s: Settings, scanners) -> list[Row]:  # type: ignore[no-untyped-def]
    clamd, spamd = scanners
    payload = worm_payload()
    wire = [lg.to_wire(worm_message(n, payload)) for n in range(3000)]
    size = len(wire[0])
    import uvloop

    print("  scenario 4: raw clamd INSTREAM", flush=True)
    (n, secs), raw_cpu = measured([clamd.proc.pid], lambda: uvloop.run(
        _raw_instream(clamd.address, wire[0], 4, s.seconds)))
    raw_rate = n / secs
    out = {}
    for cache in (True, False):
        print(f"  scenario 4: relay, cache {'on' if cache else 'off'}", flush=True)
        with relay(s, f"s4-cache-{'on' if cache else 'off'}", clamd=clamd.address,
                   spamd=spamd.address, clamav_cache=cache, setup=[ALIASES]) as r:
            def steps(i: int) -> list[lg.Step]:
                return lg.mail_steps(f"{'bob' if i % 2 else 'alice'}@example.org",
                                     wire[i % len(wire)], sender=f"u{i}@infected.example",
                                     expect=554)

            scans0 = clamd.scans()
            (res, clam_cpu) = measured([clamd.proc.pid], lambda: load(
                r.port, steps, concurrency=16, duration=s.seconds, sources=GEN_SOURCES))
            scans = clamd.wait_scans(scans0 + 1, 2) - scans0
            if res.errors:
                print(f"    {res.errors} failed, first: {res.first_error}")
            out[cache] = (res, clam_cpu, scans)
    on, on_cpu, on_scans = out[True]
    off, off_cpu, off_scans = out[False]
    per_on = on_cpu / max(1, on.ok)
    per_off = off_cpu / max(1, off.ok)
    title = "4 worm outbreak"
    return [
        Row(title, f"raw clamd INSTREAM of one copy ({size // 1024} KB; scans/s)",
            f"{raw_rate:,.0f}/s", note=f"clamd CPU {raw_cpu / max(1, n) * 1000:.2f} ms/scan, "
            "4 at a time"),
        Row(title, "relay, cache on: refusals/s (p50 / p99)",
            f"{_fmt_rate(on.rate)} ({_ms(on.p50)} / {_ms(on.p99)})", _fmt_rate(raw_rate),
            _ratio(on.rate, raw_rate), ">= 300/s", on.rate >= 300,
            f"cache hit rate {1 - min(on_scans, on.ok) / max(1, on.ok):.1%} "
            f"({on_scans} clamd scans for {on.ok} copies, measured window plus warm-up)"),
        Row(title, "relay, cache off: refusals/s", _fmt_rate(off.rate), _fmt_rate(raw_rate),
            _ratio(off.rate, raw_rate), note=f"{off_scans} clamd scans"),
        Row(title, "clamd CPU per refused copy, cache on", f"{per_on * 1000:.3f} ms",
            f"{per_off * 1000:.3f} ms (cache off)", f"{per_on / per_off:.3f}x" if per_off
            else "n/a", "< 0.1x", per_off > 0 and per_on < 0.1 * per_off),
    ]


# -- scenario 5: large messages ---------------------------------------------------------------

async def _probe(port: int, stop: asyncio.Event, interval: float = 0.01) -> list[float]:
    """A HELO every `interval` on one connection: the reply time bounds the relay's longest
    event-loop stall from outside (a stalled loop answers nothing). HELO, not NOOP: NOOP is
    a junk command, and past `smtpd_junk_command_limit` of them the session is cut off."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=("127.10.9.9", 0))
    await reader.readline()
    rtts = []
    while not stop.is_set():
        t0 = time.perf_counter()
        writer.write(b"HELO probe.example\r\n")
        await reader.readline()
        rtts.append(time.perf_counter() - t0)
        await asyncio.sleep(interval)
    writer.write(b"QUIT\r\n")
    writer.close()
    return rtts


def _big_messages(count: int, size: int) -> list[bytes]:
    raw = random.Random(5).randbytes(size * 3 // 4 - 4096)
    body = base64.encodebytes(raw)
    big = []
    for i in range(count):
        head = (f"From: <big{i}@sender.example>\nTo: <alice@example.org>\nSubject: big {i}\n"
                f"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b{i}\n\n"
                f"--b{i}\nContent-Type: text/plain\n\nsee attached\n--b{i}\n"
                f"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
                f"\n").encode()
        big.append(lg.to_wire(head + body + f"--b{i}--\n".encode()))
    return big


def _send_big(port: int, count: int, size: int, ready: Any, times: Any) -> None:
    """In a process of its own: the twenty big senders are other clients, and pushing
    400 MB from the process that times the small sessions slowed its own loop (its
    latencies were then the generator's, not the relay's)."""
    import uvloop

    big = _big_messages(count, size)

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        await lg.session("127.0.0.1", port, lg.mail_steps("alice@example.org", big[i]),
                         f"127.10.8.{i + 1}", timeout=600)
        times.put(time.perf_counter() - t0)

    async def go() -> None:
        ready.set()
        await asyncio.gather(*(one(i) for i in range(count)))

    uvloop.run(go())


async def _peak_rss(pid: int, stop: asyncio.Event) -> int:
    """The largest resident size of `pid` and its children, sampled every 50 ms."""
    peak = 0
    while not stop.is_set():
        peak = max(peak, tree_rss_bytes(pid))
        await asyncio.sleep(0.05)
    return peak


async def _large_run(port: int, small: int, big: Any, pid: int
                     ) -> tuple[lg.LoadResult, list[float], int]:
    """Small sessions and the probe; `big` (a started sender process, or None) runs
    alongside and is waited for. Also returns the relay's peak RSS meanwhile."""
    stop = asyncio.Event()
    probe = asyncio.create_task(_probe(port, stop))
    peak = asyncio.create_task(_peak_rss(pid, stop))
    await asyncio.sleep(0.5 if big is None else 3.0)  # the big ones are streaming by now
    smalls = await lg.drive("127.0.0.1", port, lg.dictionary_steps, concurrency=10,
                            duration=0, warmup=0, sources=GEN_SOURCES, limit=small)
    if big is not None:
        await asyncio.to_thread(big.join)
    stop.set()
    return smalls, await probe, await peak


def scenario_5(s: Settings, scanners) -> list[Row]:  # type: ignore[no-untyped-def]
    import multiprocessing

    import uvloop

    clamd, spamd = scanners
    count = 20
    size = 20 * 2**20
    wire = len(_big_messages(1, size)[0])
    spawn = multiprocessing.get_context("spawn")
    with relay(s, "s5", clamd=clamd.address, spamd=spamd.address, setup=[ALIASES]) as r:
        print("  scenario 5: small sessions alone", flush=True)
        quiet, quiet_rtt, quiet_rss = uvloop.run(_large_run(r.port, 100, None, r.pids[0]))
        print(f"  scenario 5: {count} x {wire / 2**20:.0f} MB + 100 small", flush=True)
        ready, times = spawn.Event(), spawn.Queue()
        sender = spawn.Process(target=_send_big, args=(r.port, count, size, ready, times))
        sender.start()
        ready.wait(120)
        loaded, rtt, loaded_rss = uvloop.run(_large_run(r.port, 100, sender, r.pids[0]))
        big_times = [times.get() for _ in range(count)] if sender.exitcode == 0 else []
    stall = max(rtt) if rtt else float("nan")
    title = "5 large messages"
    return [
        Row(title, "small sessions' p99, alone (baseline)", _ms(quiet.p99),
            note=f"HELO probe max {_ms(max(quiet_rtt))}"),
        Row(title, f"small sessions' p99 during {count} x 20 MB", _ms(loaded.p99),
            _ms(quiet.p99), _ratio(loaded.p99, quiet.p99), "< 200 ms", loaded.p99 < 0.2,
            f"{loaded.ok} of 100 ok; {len(big_times)} big messages in "
            f"{max(big_times, default=0):.1f} s (sent from a process of their own)"),
        Row(title, "longest event-loop stall (HELO probe every 10 ms)", _ms(stall),
            _ms(max(quiet_rtt)), _ratio(stall, max(quiet_rtt)), "< 100 ms", stall < 0.1,
            "upper bound: probe reply time"),
        Row(title, f"relay peak RSS during {count} x 20 MB", f"{loaded_rss / 2**20:.0f} MB",
            f"{quiet_rss / 2**20:.0f} MB (small sessions alone)",
            _ratio(loaded_rss, quiet_rss), "< 2 GB", loaded_rss < 2 * 2**30,
            "relay and its children, sampled every 50 ms (the bound in README Security)"),
    ]


# -- scenario 6: idle connections -------------------------------------------------------------

async def _hold(port: int, n: int) -> list:  # type: ignore[type-arg]
    steps = [(None, 220), (b"EHLO idle.example\r\n", 250)]
    sem = asyncio.Semaphore(200)
    out = []

    async def one(i: int) -> None:
        async with sem:
            _, transport = await lg.session("127.0.0.1", port, steps,
                                            GEN_SOURCES[i % len(GEN_SOURCES)], hold=True)
            out.append(transport)

    await asyncio.gather(*(one(i) for i in range(n)))
    return out


def _idle_rss(port: int, pid: int, n: int) -> tuple[int, int, int]:
    """RSS of `pid` before and after `n` idle connections, and of it with its children
    after (the relay's event writer child grows on its own: its imports and SQLite cache
    are no cost of the connections)."""
    import uvloop

    async def go() -> tuple[int, int, int]:
        before = rss_bytes(pid)
        transports = await _hold(port, n)
        await asyncio.sleep(1.0)
        after, total = rss_bytes(pid), tree_rss_bytes(pid)
        for t in transports:
            t.close()
        await asyncio.sleep(0.5)
        return before, after, total

    return uvloop.run(go())


def scenario_6(s: Settings) -> list[Row]:
    n = 5000
    print("  scenario 6: bare aiosmtpd", flush=True)
    b = Baseline(s.workdir, "rcpt")
    try:
        b0, b1, _ = _idle_rss(b.port, b.proc.pid, n)
    finally:
        b.stop()
    print("  scenario 6: relay", flush=True)
    with relay(s, "s6") as r:
        r0, r1, total = _idle_rss(r.port, r.pids[0], n)
    mb = 2**20
    return [
        Row("6 idle connections", f"relay RSS with {n:,} idle connections (with children)",
            f"{total / mb:.0f} MB", f"{b1 / mb:.0f} MB (bare aiosmtpd)", _ratio(total, b1),
            "< 300 MB", total < 300 * mb,
            f"{(r1 - r0) / n / 1024:.1f} KB/connection (bare aiosmtpd "
            f"{(b1 - b0) / n / 1024:.1f}); SMTP process {r0 / mb:.0f} -> {r1 / mb:.0f} MB"),
    ]


# -- scenario 7: the store --------------------------------------------------------------------

def _event_rows(n: int) -> list:  # type: ignore[type-arg]
    from relay.events.record import EventRecord

    now = datetime.now(UTC)
    return [EventRecord(ts=now - timedelta(microseconds=i), node="bench",
                        client=f"10.1.{i % 250}.{i % 200}", host=f"10.1.{i % 250}.{i % 200}",
                        stage="rcpt", action="reject", reason="unknown_rcpt", code=550,
                        helo="bot.invalid", sender=f"x{i}@spammer.invalid",
                        recipient=f"nobody{i}@example.org") for i in range(n)]


BATCH = StoreConfig().event_batch  # [store] event_batch's default


def _writer_rate(url: str, rows: list) -> float:  # type: ignore[type-arg]
    """Events/s through EventWriter: emit all, then let its task write them in batches."""
    from relay.events.writer import EventWriter
    from relay.store.database import make_engine, upgrade

    engine = make_engine(url)
    upgrade(engine)

    async def go() -> float:
        # room for every event unfolded (past half its capacity the writer folds them per
        # host and reason): this measures the insert rate of one row per event
        writer = EventWriter(engine, batch=BATCH, interval=0.05,
                             capacity=2 * len(rows) + 2)
        # The child starts with the relay, long before a flood: an empty batch waits until
        # it has imported and connected (ensure() returns once it is spawned, and its
        # imports then fell into the timing: about 0.5 s of a 4 s run).
        await writer.process.write([])
        task = asyncio.create_task(writer.run())
        start = time.perf_counter()
        for r in rows:
            writer.emit(r)
        while writer.written < len(rows):
            await asyncio.sleep(0.01)
        secs = time.perf_counter() - start
        await writer.close(task)
        return len(rows) / secs

    try:
        return asyncio.run(go())
    finally:
        engine.dispose()


def _raw_rate(url: str, rows: list) -> float:  # type: ignore[type-arg]
    """Baseline: the driver's executemany of the same rows, same batches, no SQLAlchemy."""
    from relay.events.record import as_row, insert_sql
    from relay.store.database import make_engine, upgrade

    engine = make_engine(url)
    upgrade(engine)
    sqlite = url.startswith("sqlite")
    sql = insert_sql(engine.dialect)  # the writer's own statement
    # the time as the store keeps it: integer microseconds on SQLite, a datetime elsewhere
    tuples = [as_row(r) if sqlite else (r.ts, *as_row(r)[1:]) for r in rows]
    raw = engine.raw_connection()
    try:
        start = time.perf_counter()
        for i in range(0, len(tuples), BATCH):
            cur = raw.cursor()
            cur.executemany(sql, tuples[i:i + BATCH])
            raw.commit()
        secs = time.perf_counter() - start
    finally:
        raw.close()
        engine.dispose()
    return len(rows) / secs


def _script(args: list[str], timeout: float) -> str:
    done = subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def scenario_7(s: Settings) -> list[Row]:
    title = "7 store"
    n = 50_000 if s.quick else 200_000
    rows_in = _event_rows(n)
    out: list[Row] = []
    work = s.workdir / "s7"
    work.mkdir(parents=True, exist_ok=True)
    print("  scenario 7: events/s SQLite", flush=True)
    raw = _raw_rate(f"sqlite:///{work / 'raw.db'}", rows_in)
    rate = _writer_rate(f"sqlite:///{work / 'writer.db'}", rows_in)
    out.append(Row(title, f"events/s, SQLite, EventWriter (batches of {BATCH:,}, with rollups; "
                          f"{n:,} events)", _fmt_rate(rate), _fmt_rate(raw) + " raw insert",
                   _ratio(rate, raw), ">= 50,000/s", rate >= 50_000,
                   "baseline: sqlite3 executemany of the same rows, no rollups"))
    print("  scenario 7: events/s PostgreSQL", flush=True)
    from tests.support import PostgresCluster

    pg = PostgresCluster()
    try:
        pg.start()
        raw_pg = _raw_rate(pg.create_database(), rows_in)
        rate_pg = _writer_rate(pg.create_database(), rows_in)
        out.append(Row(title, "events/s, PostgreSQL, EventWriter", _fmt_rate(rate_pg),
                       _fmt_rate(raw_pg) + " raw insert", _ratio(rate_pg, raw_pg),
                       note="private cluster, fsync off; baseline psycopg executemany"))
    except Exception as e:
        out.append(Row(title, "events/s, PostgreSQL", "failed", note=str(e)[:120]))
    finally:
        pg.stop()
    events = 1_000_000 if s.quick else 10_000_000
    print(f"  scenario 7: bench_reports.py --events {events:,}", flush=True)
    try:
        text = _script(["scripts/bench_reports.py", "--events", str(events), "--dir",
                        str(work / "reports")], 1200)
        report = float(re.search(r"CLI: floodgate report hosts --since 24h\s+([\d.]+)",
                                 text).group(1))  # type: ignore[union-attr]
        naive = float(re.search(r"baseline: naive GROUP BY[^\n]*?\s([\d.]+)\s+[\d.]+x",
                                text).group(1))  # type: ignore[union-attr]
        startup = float(re.search(r"check-config \(startup only\)\s+([\d.]+)",
                                  text).group(1))  # type: ignore[union-attr]
        out.append(Row(title, f"`report hosts --since 24h` over {events:,} events (CLI)",
                       f"{report:.2f} s", f"{naive:.2f} s naive GROUP BY",
                       _ratio(report, naive), "< 2 s", report < 2,
                       f"of which {startup:.2f} s CLI start-up; scripts/bench_reports.py"))
    except Exception as e:
        out.append(Row(title, "report hosts", "failed", note=str(e)[-200:]))
    print("  scenario 7: bench_firewall.py --blocks 100000", flush=True)
    try:
        text = _script(["scripts/bench_firewall.py", "--blocks", "100000"], 600)

        def secs(label: str) -> float:
            return float(re.search(re.escape(label) + r"\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]

        export = secs("export nft total (read + render)")
        read = secs("read active blocks (SQLite)")
        empty = secs("nft -f, empty kernel")
        replace = secs("nft -f, replacing 100k")
        ipset = secs("ipset restore, empty kernel")
        out.append(Row(title, "`blocklist export` nft, 100,000 blocks (read + render)",
                       f"{export:.2f} s", f"{read:.2f} s read alone", _ratio(export, read),
                       "< 1 s", export < 1, "scripts/bench_firewall.py, best of 3"))
        cli = secs("floodgate blocklist export -o FILE")
        startup = secs("CLI start-up (floodgate --help)")
        out.append(Row(title, "`floodgate blocklist export -o FILE`, the whole command",
                       f"{cli:.2f} s", f"{startup:.2f} s CLI start-up", _ratio(cli, startup),
                       note="start-up = `floodgate --help`; `blocklist watch` pays it once"))
        out.append(Row(title, "`nft -f` apply, 100,000 blocks (empty / replacing)",
                       f"{empty:.2f} s / {replace:.2f} s", f"{ipset:.2f} s ipset restore",
                       _ratio(max(empty, replace), ipset), "< 3 s", max(empty, replace) < 3,
                       "in a throw-away network namespace"))
    except Exception as e:
        out.append(Row(title, "firewall export/apply", "failed", note=str(e)[-200:]))
    return out


# -- scenario 8: one hostile client at a time (issue #16) ---------------------------------------

def _attack(port: int, name: str, pid: int, hold: bool = False
            ) -> tuple[dict[str, Any], list[float], int]:
    """Run attack `name` (scripts/benchlib/attacks.py) from a process of its own, with the
    NOOP probe and the RSS sampler alongside; returns what the attacker saw, the probe's
    reply times and the relay's peak RSS (children included). `hold`: the attacker
    reports once it holds its connections; the peak is taken then, and it is let go."""
    import uvloop

    async def go() -> tuple[dict[str, Any], list[float], int]:
        stop = asyncio.Event()
        probe = asyncio.create_task(_probe(port, stop))
        peak = asyncio.create_task(_peak_rss(pid, stop))
        proc = await asyncio.create_subprocess_exec(
            PY, "-m", "scripts.benchlib.attacks", name, str(port), cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdin is not None
        held = 0
        if hold:
            await proc.stdout.readline()  # {"holding": n}
            held = tree_rss_bytes(pid)
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        out, _ = await asyncio.wait_for(proc.communicate(), 600)
        await asyncio.sleep(1.0)  # the probe keeps going a while: p99 over 100+ replies
        stop.set()
        lines = out.decode().strip().splitlines()
        got = json.loads(lines[-1]) if lines else {"error": proc.returncode}
        if hold:
            got["rss_held_mb"] = round(held / 2**20)
            got["rss_after_mb"] = round(tree_rss_bytes(pid) / 2**20)
        return got, await probe, await peak

    return uvloop.run(go())


def _events_kept(db: Path, net: str) -> tuple[int, int]:
    """unknown_rcpt events stored for clients in `net` (127.31.), and how many hosts."""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        cols = {row[1] for row in con.execute("PRAGMA table_info(events)")}
        count = "sum(count)" if "count" in cols else "count(*)"
        n, hosts = con.execute(
            f"SELECT coalesce({count}, 0), count(DISTINCT client) FROM events "
            "WHERE reason = 'unknown_rcpt' AND client LIKE ?", (net + "%",)).fetchone()
    finally:
        con.close()
    return int(n), int(hosts)


def scenario_8(s: Settings, scanners) -> list[Row]:  # type: ignore[no-untyped-def]
    import uvloop

    from scripts.benchlib import attacks

    title = "8 hostile clients"
    out: list[Row] = []
    work = s.workdir / "s8"
    work.mkdir(parents=True, exist_ok=True)
    aliases = attacks.harvest_aliases(work / "aliases.txt")
    setup = [ALIASES, ["aliases", "import", str(aliases), "--format", "postfix"]]
    # the probe is the one client exempt from the per-client and per-session limits
    probe_only = '[limits]\nexempt = ["127.10.9.9/32"]\n'
    clamd, spamd = scanners
    with relay(s, "s8", scoring=True, setup=setup, extra=probe_only, clamd=clamd.address,
               spamd=spamd.address) as r:
        pid = r.pids[0]
        stop = asyncio.Event()

        async def quiet() -> tuple[list[float], int]:
            probe = asyncio.create_task(_probe(r.port, stop))
            peak = asyncio.create_task(_peak_rss(pid, stop))
            await asyncio.sleep(s.seconds)
            stop.set()
            return await probe, await peak

        print("  scenario 8: probe alone", flush=True)
        base_rtt, base_rss = uvloop.run(quiet())
        base99 = _p99(base_rtt)
        out.append(Row(title, "HELO probe alone (baseline): p99 / worst",
                       f"{_ms(base99)} / {_ms(max(base_rtt))}",
                       note=f"RSS {base_rss / 2**20:.0f} MB"))
        for name, what in [
                ("folded_header", "10 clients, one header folded over 124,000 lines (9.5 MB)"),
                ("pipelined_rcpt", "10 sessions pipelining 1,000 unknown RCPTs each"),
                ("pipelined_noop", "1 session pipelining 100,000 NOOPs"),
                ("mime_parts", "10 x 1 MB of tiny MIME parts at once"),
                ("many_headers", "10 x 1 MB of short header fields at once"),
                ("unfinished_data", f"{attacks.HOLDERS} x 20 MB of DATA without the dot"),
                ("harvest", f"directory harvest, {attacks.WORDS:,} words, one session")]:
            print(f"  scenario 8: {name}", flush=True)
            got, rtt, peak = _attack(r.port, name, pid, hold=name == "unfinished_data")
            p99, worst = _p99(rtt), max(rtt, default=float("nan"))
            note = ", ".join(f"{k} {v}" for k, v in got.items())
            if name == "unfinished_data":
                grown = got.get("rss_held_mb", 0) - base_rss / 2**20
                out.append(Row(title, f"{what}: relay RSS held / after release",
                               f"{got.get('rss_held_mb')} MB / {got.get('rss_after_mb')} MB",
                               f"{base_rss / 2**20:.0f} MB quiet", _ratio(
                                   got.get("rss_held_mb", 0), base_rss / 2**20),
                               "< 300 MB more than quiet", grown < 300,
                               "relay and its children"))
            if name == "harvest":
                out.append(Row(title, f"{what}: valid addresses learned",
                               f"{got.get('learned')} of {attacks.VALID}",
                               f"{got.get('tried')} tried", target="<= 20",
                               met=(got.get("learned") or 0) <= 20, note=note))
            out.append(Row(title, f"{what}: probe p99 / worst",
                           f"{_ms(p99)} / {_ms(worst)}", f"{_ms(base99)} / "
                           f"{_ms(max(base_rtt))}", _ratio(p99, base99),
                           "< 100 ms / < 500 ms", p99 < 0.1 and worst < 0.5,
                           f"peak RSS {peak / 2**20:.0f} MB; {note}"))
    print("  scenario 8: event flood", flush=True)
    with relay(s, "s8e", event_buffer=1000) as r:
        got, rtt, _ = _attack(r.port, "event_flood", r.pids[0])
        db = s.workdir / "s8e" / "floodgate.db"
    kept, hosts = _events_kept(db, "127.31.")
    refused = int(got.get("refused_rcpts", 0))
    out.append(Row(title, f"event flood ({attacks.FLOOD_HOSTS:,} hosts, event_buffer = 1,000):"
                   " unknown_rcpt events kept", f"{kept:,} of {refused:,}",
                   "every refusal", _ratio(kept, refused), "1.00x, every host",
                   kept >= refused and hosts >= min(attacks.FLOOD_HOSTS, refused),
                   f"{hosts:,} hosts in the store; probe worst {_ms(max(rtt, default=0))}"))
    return out


def _p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# -- scenario 9: the outbreak replayed against Postfix + amavisd-new and the relay -------------

def _secs(x: float, grace: float) -> str:
    if x == float("inf"):
        return f"> {grace:.0f} s"  # not arrived: each was watched at least `grace` seconds
    return f"{x:.2f} s" if x < 10 else f"{x:.0f} s"


def _share(x: float) -> str:
    return f"{x:.0%}"


def scenario_9(s: Settings) -> list[Row]:
    """The same MyDoom-like traffic against the reference peer stack and the relay, step
    by step in turn (scripts/benchlib/outbreak.py), in the peers' network namespace; the
    peer's figures are the baseline column."""
    from scripts.benchlib import peers

    title = "9 outbreak replay"
    why = peers.available()
    if why:
        return [Row(title, "Postfix + amavisd-new against the relay", "not measured",
                    note=why)]
    work = s.workdir / "s9"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "peers.log"
    print("  scenario 9: setting up the peer stack (Postfix + amavisd-new)", flush=True)
    try:
        peers.setup(log)
        cmd = ["ip", "netns", "exec", peers.NETNS, PY, "-m", "scripts.benchlib.outbreak",
               "--workdir", str(work), *(["--quick"] if s.quick else [])]
        subprocess.run(cmd, cwd=ROOT, check=True, timeout=1800)
    finally:
        peers.stop(log)
    data = json.loads((work / "outbreak.json").read_text())
    if "error" in data:
        return [Row(title, "outbreak replay", "error", note=data["error"][:200])]
    peer, fg = data["stacks"].get("peer", {}), data["stacks"].get("floodgate", {})
    for name, got in (("peer", peer), ("floodgate", fg)):
        if "error" in got or "steps" not in got:
            return [Row(title, f"{name} run", "error", note=str(got.get("error"))[:200])]
    grace = float(data["mix"]["grace"])

    def backlog(x: dict[str, Any], queue: str) -> str:
        return (f"{_share(x['within'])}; backlog {x['backlog_growth_per_s']:+.1f}/s "
                f"({queue} {x['queued_at_window_end']}, sessions open "
                f"{x['open_at_window_end']} at {data['mix']['window']:g} s)")

    out: list[Row] = []
    for p, f in zip(peer["steps"], fg["steps"], strict=True):
        r = f["rates"]
        what = (f"{f['multiple']}x: {r['worm']:g} worm copies/s + {r['dictionary']:g} "
                f"dictionary sessions/s, {r['legit']:g} legitimate/s")
        load = (f"load average at the start {p['load_average']:.1f} (Postfix run), "
                f"{f['load_average']:.1f} (relay run)")
        ratio = (_ratio(f["e2e_p99"], p["e2e_p99"]) if p["e2e_p99"] != float("inf")
                 else "< " + _ratio(f["e2e_p99"], grace))
        out.append(Row(
            title, f"{what}: legitimate mail end to end p50 / p99 (relay; baseline Postfix + "
            "amavisd-new)", f"{_secs(f['e2e_p50'], grace)} / {_secs(f['e2e_p99'], grace)}",
            f"{_secs(p['e2e_p50'], grace)} / {_secs(p['e2e_p99'], grace)}", ratio,
            "p99 < 60 s", f["e2e_p99"] < 60,
            f"{f['legit_sent']} / {p['legit_sent']} legitimate messages (relay / Postfix); "
            f"{load}"))

        worm_f, worm_p = (", ".join(f"{n} x {c}" for c, n in x["sessions"]["worm"]["codes"]
                                    .items()) for x in (f, p))
        out.append(Row(
            title, f"{f['multiple']}x: legitimate mail delivered within {f['within_s']:g} s; "
            "backlog growth", backlog(f, "spool"), backlog(p, "Postfix queue"),
            _ratio(f["within"], p["within"]), ">= 99%", f["within"] >= 0.99,
            f"worm copies answered {worm_f} by the relay, {worm_p} by Postfix (then "
            f"discarded by amavis, {p['filtered_per_s']:g} msgs/s through amavis); "
            f"machine CPU busy {f['cpu_busy']:.0%} (relay run) / {p['cpu_busy']:.0%} "
            "(Postfix run)"))
    return out
