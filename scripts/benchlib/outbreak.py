"""Scenario 9, the outbreak replayed side by side: the same MyDoom-like traffic against the
reference peer (Postfix + amavisd-new + ClamAV + SpamAssassin, scripts/benchlib/peers.py)
and against Floodgate, step by step in turn (never both under load at once), both in the
peers' network namespace.

    ip netns exec peers python -m scripts.benchlib.outbreak --workdir DIR [--quick]

(scenario_9 in scenarios.py runs it so, and turns DIR/outbreak.json into rows.)

The traffic (README "Design", the university relay in the MyDoom.M outbreak of 2004): worm
hosts mailing copies of one worm to valid users, dictionary bots guessing unknown users,
and a steady trickle of legitimate mail to valid users. Open loop: sessions start at their
rate whether or not the server keeps up, as infected hosts do; the attack is stepped up in
multiples of a base rate. What is measured is the legitimate mail: from the start of its
SMTP session to its arrival at the next hop (stampsink.py), and whether each stack keeps up
(its queue, and the sessions still open).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

from scripts.benchlib import loadgen as lg
from scripts.benchlib.services import PY, ROOT, free_port, wait_port
from scripts.benchlib.services import stop as stop_process

WORM_SOURCES = lg.source_addresses(count=300, net=40)  # infected hosts
BOT_SOURCES = lg.source_addresses(count=200, net=50)  # dictionary bots
LEGIT_SOURCES = lg.source_addresses(count=50, net=30)  # other sites' mail servers
# The peer's clamd knows the worm by this string (Test.MyDoom.Body, the peers' setup.sh);
# Floodgate's by tests.make_fixtures.WORM_MARKER. The copies carry both.
PEER_MARKER = b"MYDOOM-TEST-PAYLOAD-7f3a"
USERS = 772  # user0001..user0772@example.org, the peer's relay_recipient_maps
WITHIN = 60.0  # "delivered within a minute"
MAX_OPEN = 4000  # sessions the generator keeps open at most (file descriptors)


@dataclass(frozen=True)
class Mix:
    """Rates per second; the attack's are multiplied by each step."""

    legit: float = 2.0
    worm: float = 1.0
    dictionary: float = 3.0
    steps: tuple[int, ...] = (1, 3, 10, 30, 100)
    window: float = 30.0  # legitimate mail is sent for this long in each step
    grace: float = 60.0  # the attack goes on until it has all arrived, at most this long more


def user(n: int) -> str:
    return f"user{n % USERS + 1:04d}@example.org"


WORDS = ("meeting", "minutes", "schedule", "review", "library", "course", "seminar",
         "results", "agreed", "update", "team", "project", "report", "budget", "thanks",
         "planning", "notes", "office", "week", "the", "and", "for", "with", "our", "see")


def legit_message(seq: str, n: int, rcpt: str) -> bytes:
    """About 3 KB of plain text; unique, so no cache of either stack helps."""
    rnd = random.Random(seq)
    words = [" ".join(rnd.choice(WORDS) for _ in range(11)).capitalize() + "."
             for _ in range(45)]
    return (f"X-Bench-Seq: {seq}\nFrom: Carol <carol{n % 50}@partner.example>\n"
            f"To: <{rcpt}>\nSubject: {rnd.choice(WORDS)} {rnd.choice(WORDS)} {n}\n"
            f"Date: {formatdate(localtime=False)}\n"
            f"Message-ID: <{seq}.{rnd.getrandbits(40):x}@partner.example>\n"
            "MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n"
            f"Hello,\n\nthe notes of {n}, as agreed.\n\n" + "\n".join(words)
            + "\n\nRegards,\nCarol\n").encode()


def worm_copies(count: int) -> list[bytes]:
    """Copies of one worm (scenario 4's, with the peer's marker too), ready for DATA."""
    from scripts.benchlib.scenarios import worm_message, worm_payload

    payload = worm_payload() + PEER_MARKER + b"\0" * 64
    return [lg.to_wire(worm_message(n, payload)) for n in range(count)]


@dataclass
class Tally:
    """One kind of session in one step."""

    started: int = 0
    dropped: int = 0  # not started: MAX_OPEN sessions already open
    errors: int = 0
    first_error: str = ""
    codes: dict[str, int] = field(default_factory=dict)  # the reply that decided it
    seconds: list[float] = field(default_factory=list)  # SMTP session times

    def summary(self) -> dict[str, Any]:
        s = sorted(self.seconds)
        return {"started": self.started, "dropped": self.dropped, "errors": self.errors,
                "first_error": self.first_error, "codes": self.codes,
                "smtp_p50": s[len(s) // 2] if s else None,
                "smtp_p99": s[min(len(s) - 1, int(0.99 * len(s)))] if s else None}


@dataclass
class Stack:
    """What the replay needs to know of the stack under test."""

    name: str
    port: int
    queued: Callable[[], int]  # messages accepted and not yet delivered or discarded
    between: Callable[[], None]  # after a step: start the next one from an empty queue
    filtered: Callable[[], int] | None = None  # messages its content filter has finished


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))] if s else math.nan


class Replay:
    def __init__(self, stack: Stack, stamps: Path, mix: Mix, worms: list[bytes]):
        self.stack = stack
        self.stamps = stamps
        self.mix = mix
        self.worms = worms
        self.arrived: dict[str, float] = {}
        self._offset = 0
        self.open = 0

    def read_stamps(self) -> None:
        with open(self.stamps, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            seq, stamp, *_ = line.split()
            self.arrived.setdefault(seq.decode(), float(stamp))

    async def _session(self, tally: Tally, steps: list[lg.Step], source: str,
                       decisive: int) -> tuple[float, int | None]:
        """One session; returns its start and the code of step `decisive` (None: failed)."""
        self.open += 1
        tally.started += 1
        t0 = time.monotonic()
        try:
            codes, _ = await lg.session("127.0.0.1", self.stack.port, steps, source,
                                        timeout=600)
        except (OSError, lg.SessionError, TimeoutError) as e:
            tally.errors += 1
            tally.first_error = tally.first_error or f"{type(e).__name__}: {e}"[:160]
            return t0, None
        finally:
            self.open -= 1
        tally.seconds.append(time.monotonic() - t0)
        code = codes[decisive] if len(codes) > decisive else None
        tally.codes[str(code)] = tally.codes.get(str(code), 0) + 1
        return t0, code

    async def step(self, multiple: int, label: str) -> dict[str, Any]:
        mix = self.mix
        load = os.getloadavg()[0]
        busy0 = _cpu_busy()
        filtered0 = self.stack.filtered() if self.stack.filtered else 0
        start = time.monotonic() + 0.2
        window_end = start + mix.window
        hard_end = window_end + mix.grace
        stop_attack = asyncio.Event()
        tallies = {k: Tally() for k in ("legit", "worm", "dictionary")}
        legit: dict[str, tuple[float, int | None]] = {}  # seq -> (SMTP start, DATA reply)
        sent: list[str] = []
        tasks: set[asyncio.Task[Any]] = set()

        def spawn(tally: Tally, coro: Coroutine[Any, Any, Any]) -> None:
            if self.open >= MAX_OPEN:
                tally.dropped += 1
                coro.close()
                return
            task = asyncio.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        async def one_legit(k: int) -> None:
            seq = f"{label}-{multiple}x-{k}"
            rcpt = user(k * 7 + multiple)
            wire = lg.to_wire(legit_message(seq, k, rcpt))
            sent.append(seq)
            legit[seq] = await self._session(
                tallies["legit"], lg.mail_steps(rcpt, wire, sender=f"carol{k % 50}@partner"
                                                ".example", expect=None),
                LEGIT_SOURCES[k % len(LEGIT_SOURCES)], 5)

        def worm(k: int) -> Coroutine[Any, Any, Any]:
            return self._session(tallies["worm"], lg.mail_steps(
                user(k), self.worms[k % len(self.worms)], sender=f"u{k}@infected.example",
                expect=None), WORM_SOURCES[k % len(WORM_SOURCES)], 5)

        def bot(k: int) -> Coroutine[Any, Any, Any]:
            return self._session(tallies["dictionary"], lg.dictionary_steps(k),
                                 BOT_SOURCES[k % len(BOT_SOURCES)], 3)

        async def arrivals(rate: float, kind: str, make: Callable[[int], Any],
                           until: Callable[[float], bool]) -> None:
            k = 0
            while True:
                at = start + k / rate
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if until(at):
                    return
                spawn(tallies[kind], make(k))
                k += 1

        samples: list[dict[str, float]] = []

        async def sample() -> None:
            while not stop_attack.is_set():
                now = time.monotonic()
                samples.append({"t": round(now - start, 2), "queued": self.stack.queued(),
                                "open": self.open})
                await asyncio.sleep(1.0)

        def attack_over(at: float) -> bool:
            return stop_attack.is_set() or at >= hard_end

        await asyncio.sleep(max(0.0, start - time.monotonic()))
        sampler = asyncio.create_task(sample())
        feeders = [
            asyncio.create_task(arrivals(mix.legit, "legit", one_legit,
                                         lambda at: at >= window_end)),
            asyncio.create_task(arrivals(mix.worm * multiple, "worm", worm, attack_over)),
            asyncio.create_task(arrivals(mix.dictionary * multiple, "dictionary", bot,
                                         attack_over))]
        # The attack goes on until every legitimate message has arrived or failed.
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if now < window_end:
                continue
            self.read_stamps()
            pending = [s for s in sent if s not in self.arrived
                       and (s not in legit or legit[s][1] == 250)]
            if not pending or now >= hard_end:
                break
        stop_attack.set()
        attack_end = time.monotonic()
        await asyncio.gather(*feeders, sampler)
        if tasks:  # attack sessions still open: given a while, then cut
            _done, late = await asyncio.wait(set(tasks), timeout=30)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        busy1 = _cpu_busy()
        filtered1 = self.stack.filtered() if self.stack.filtered else 0
        self.read_stamps()
        result = self._summary(multiple, legit, sent, samples, tallies, start, window_end)
        result.update({
            "load_average": round(load, 2),
            "cpu_busy": round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 3),
            "attack_seconds": round(attack_end - start, 1),
            "filtered_per_s": round((filtered1 - filtered0) / (attack_end - start), 1)
            if self.stack.filtered else None})
        self.stack.between()
        return result

    def _summary(self, multiple: int, legit: dict[str, tuple[float, int | None]],
                 sent: list[str], samples: list[dict[str, float]], tallies: dict[str, Tally],
                 start: float, window_end: float) -> dict[str, Any]:
        latencies = []
        for seq in sent:
            t0, _code = legit.get(seq, (math.nan, None))
            arrived = self.arrived.get(seq)
            latencies.append(arrived - t0 if arrived is not None else math.inf)
        # each message was watched for `grace` seconds at least: a shorter grace (--quick)
        # can only tell what arrived within that
        limit = min(WITHIN, self.mix.grace)
        within = sum(1 for x in latencies if x <= limit)
        at_window = [s for s in samples if s["t"] <= window_end - start] or samples[:1]
        first, last = (samples[0], at_window[-1]) if samples else ({}, {})

        def backlog(s: dict[str, float]) -> float:
            return s.get("queued", 0) + s.get("open", 0)

        growth = (backlog(last) - backlog(first)) / max(1.0, last.get("t", 0) - first.get("t", 0))
        return {
            "multiple": multiple,
            "rates": {"legit": self.mix.legit, "worm": self.mix.worm * multiple,
                      "dictionary": self.mix.dictionary * multiple},
            "legit_sent": len(sent),
            "legit_arrived": sum(1 for x in latencies if x < math.inf),
            "e2e_p50": _pct(latencies, 0.5), "e2e_p99": _pct(latencies, 0.99),
            "e2e_max": max(latencies, default=math.nan),
            "within_s": limit, "within": within / len(sent) if sent else math.nan,
            "queued_at_window_end": last.get("queued"), "open_at_window_end": last.get("open"),
            "queued_max": max((s["queued"] for s in samples), default=None),
            "open_max": max((s["open"] for s in samples), default=None),
            "backlog_growth_per_s": round(growth, 2),
            "sessions": {k: t.summary() for k, t in tallies.items()},
            "samples": samples,
        }

    async def warm_up(self, legit: int, worms: int, timeout: float = 180) -> dict[str, Any]:
        """A few of each, before the measured steps: every amavis child and spamd child
        has its rules compiled, every cache of the relay its first entries."""
        tally = Tally()
        seqs = [f"warmup-{self.stack.name}-{k}" for k in range(legit)]
        sem = asyncio.Semaphore(4)

        async def one(k: int, steps: list[lg.Step], source: str) -> None:
            async with sem:
                await self._session(tally, steps, source, 5)

        await asyncio.gather(
            *(one(k, lg.mail_steps(user(k), lg.to_wire(legit_message(s, k, user(k))),
                                   expect=None), LEGIT_SOURCES[k]) for k, s in enumerate(seqs)),
            *(one(k, lg.mail_steps(user(k), self.worms[k], expect=None), WORM_SOURCES[k])
              for k in range(worms)))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read_stamps()
            if all(s in self.arrived for s in seqs) and self.stack.queued() == 0:
                break
            await asyncio.sleep(0.5)
        missing = [s for s in seqs if s not in self.arrived]
        if missing:
            raise RuntimeError(f"{self.stack.name} warm-up: {len(missing)} of {legit} "
                               f"legitimate messages did not arrive ({tally.summary()})")
        self.stack.between()
        return tally.summary()


def _run(stacks: list[Stack], stamps: Path, mix: Mix, worms: list[bytes]) -> dict[str, Any]:
    """Warm each stack up, then each step on each stack in turn (the order alternating):
    on a shared machine a slow minute then hits both stacks, not only the one measured in
    it. Only one stack has load at a time; the other idles, its queue empty."""
    import uvloop

    replays = [Replay(stack, stamps, mix, worms) for stack in stacks]

    async def go() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in replays:
            print(f"  scenario 9: {r.stack.name} warm-up", flush=True)
            out[r.stack.name] = {"warm_up": await r.warm_up(12, 8), "steps": []}
        for i, m in enumerate(mix.steps):
            for r in replays if i % 2 == 0 else replays[::-1]:
                print(f"  scenario 9: {r.stack.name} {m}x", flush=True)
                step = await r.step(m, r.stack.name)
                print(f"    legit p50 {step['e2e_p50']:.2f} s, p99 {step['e2e_p99']:.2f} s, "
                      f"within {step['within_s']:g} s {step['within']:.0%}, backlog "
                      f"{step['backlog_growth_per_s']}/s, load {step['load_average']}",
                      flush=True)
                out[r.stack.name]["steps"].append(step)
        return out

    return uvloop.run(go())


def _wait_empty(queued: Callable[[], int], quiet: Callable[[], int] | None = None,
                timeout: float = 120) -> None:
    """Until `queued()` is 0 and `quiet()` (a progress counter) has stopped moving."""
    deadline = time.monotonic() + timeout
    last = quiet() if quiet else 0
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = quiet() if quiet else 0
        if queued() == 0 and now == last:
            return
        last = now


@contextlib.contextmanager
def peer_stack(sink_port: int) -> Iterator[Stack]:
    """The running peer (set up by scenario_9 before this process), delivering to the
    timestamping sink; its queue is emptied after every step and at the end."""
    from scripts.benchlib.peers import Postfix

    pf = Postfix()
    pf.next_hop(sink_port)

    def between() -> None:
        pf.purge()
        _wait_empty(pf.queued, pf.filtered)

    try:
        yield Stack("peer", pf.port, pf.queued, between, pf.filtered)
    finally:
        between()
        pf.restore()


@contextlib.contextmanager
def relay_stack(work: Path, sink_port: int) -> Iterator[Stack]:
    """The relay in scripts/benchlib's demo-like configuration (scoring off), with its
    own clamd and spamd as the other scenarios have, the peer's 772 users as its aliases."""
    from scripts.benchlib.scenarios import Settings, relay
    from tests.services import run_clamd, run_spamd

    aliases = work / "aliases.txt"
    aliases.write_text("".join(f"{user(i)} {user(i)}\n" for i in range(USERS)))
    with run_clamd(work / "clamd", stream_max_length="30M", max_threads=4) as clamd, \
            run_spamd(work / "spamd", max_children=2) as spamd, \
            relay(Settings(work, False), "s9", clamd=clamd.address, spamd=spamd.address,
                  delivery=True, sink_port=sink_port,
                  setup=[["aliases", "import", str(aliases), "--format", "postfix"]]) as r:
        spool = work / "s9" / "spool" / "queue"

        def queued() -> int:
            try:
                return sum(1 for _ in spool.iterdir())
            except FileNotFoundError:
                return 0

        yield Stack("floodgate", r.port, queued, lambda: _wait_empty(queued))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="10 s steps, 20 s grace")
    ap.add_argument("--steps", default="", help="multiples, e.g. 1,3,10,30")
    ap.add_argument("--stacks", default="peer,floodgate")
    args = ap.parse_args()
    mix = Mix()
    if args.quick:
        mix = Mix(window=10.0, grace=20.0)
    if args.steps:
        mix = Mix(**{**asdict(mix), "steps": tuple(int(x) for x in args.steps.split(","))})
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    stamps = work / "arrivals.txt"
    stamps.touch()
    sink_port = free_port()
    log = work / "stampsink.log"
    with open(log, "ab") as out:
        sink = subprocess.Popen([PY, "-m", "scripts.benchlib.stampsink", "--port",
                                 str(sink_port), "--out", str(stamps)], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    result: dict[str, Any] = {"mix": asdict(mix), "stacks": {}}
    try:
        wait_port(sink_port, sink, log)
        worms = worm_copies(400)
        result["worm_bytes"] = len(worms[0])
        with contextlib.ExitStack() as running:
            stacks = [running.enter_context(peer_stack(sink_port) if name == "peer"
                                            else relay_stack(work, sink_port))
                      for name in args.stacks.split(",")]
            result["stacks"] = _run(stacks, stamps, mix, worms)
    except Exception as e:
        import traceback

        traceback.print_exc()
        result["error"] = f"{type(e).__name__}: {e}"[:300]
    finally:
        stop_process(sink)
        (work / "outbreak.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
