"""Stall probe: how long one client's content can hold the relay's event loop (issue 16).

A NOOP every 10 ms on a connection of its own measures, from outside, how long the loop
answers nothing, while attackers send messages that are expensive to parse: a header
folded over 124,000 lines (9.5 MB), or 1 MB messages of structure the MIME splitter leaves
to the email package. The bound in the issue: probe p99 100 ms, worst 500 ms.

    .venv/bin/python -m scripts.benchlib.stall                 # both attacks
    .venv/bin/python -m scripts.benchlib.stall --attack mime --count 10

It starts its own clamd (the test signatures) and relay; `attack_rows` is the piece a
scenario of scripts/bench can call with a relay of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from scripts.benchlib import loadgen as lg
from scripts.benchlib.scenarios import ALIASES, Row, Settings, relay
from tests import pathological

ATTACKS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "header": ("one header folded over 124,000 lines (9.5 MB)",
               lambda: pathological.folded_header(124_000)),
    "mime": ("1 MB of tiny parts the splitter leaves to the email package",
             lambda: pathological.tiny_parts(1 << 20)),
    "headers": ("1 MB of short header fields", lambda: pathological.many_headers(1 << 20)),
}


async def probe(port: int, stop: asyncio.Event, interval: float = 0.01) -> list[float]:
    """NOOP reply times on one connection until `stop`: each bounds a loop stall."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=("127.10.9.8", 0))
    await reader.readline()
    rtts = []
    while not stop.is_set():
        t0 = time.perf_counter()
        writer.write(b"NOOP\r\n")
        await reader.readline()
        rtts.append(time.perf_counter() - t0)
        await asyncio.sleep(interval)
    writer.write(b"QUIT\r\n")
    writer.close()
    return rtts


async def send(port: int, wire: bytes, source: str) -> str:
    """One transaction of `wire` (a message as lg.to_wire makes it, made before the probe
    starts: made here, it stalled the probe's own loop); the reply to the final dot."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        await reader.readline()
        for command in (b"EHLO attacker.test", b"MAIL FROM:<a@sender.test>",
                        b"RCPT TO:<alice@example.org>", b"DATA"):
            writer.write(command + b"\r\n")
            while (await reader.readline())[3:4] == b"-":
                pass
        writer.write(wire + b".\r\n")
        await writer.drain()
        reply = (await reader.readline()).decode(errors="replace").strip()
        writer.write(b"QUIT\r\n")
        return reply
    finally:
        writer.close()


def pct(values: list[float], p: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(p / 100 * len(data)))] if data else float("nan")


async def measure(port: int, message: bytes, count: int) -> tuple[list[float], list[str]]:
    """Probe reply times while `count` clients send `message` at once, and their replies."""
    wire = lg.to_wire(message)
    stop = asyncio.Event()
    task = asyncio.create_task(probe(port, stop))
    await asyncio.sleep(0.3)
    replies = await asyncio.gather(*(send(port, wire, f"127.10.7.{i + 1}")
                                     for i in range(count)))
    await asyncio.sleep(0.3)
    stop.set()
    return await task, list(replies)


def attack_rows(port: int, kinds: list[str], count: int) -> list[Row]:
    """A row per attack: probe p99 and worst case, and what the attackers were told."""
    rows = []
    for kind in kinds:
        what, make = ATTACKS[kind]
        rtts, replies = asyncio.run(measure(port, make(), count))
        p99, worst = pct(rtts, 99), max(rtts)
        codes = sorted({r[:9] for r in replies})
        rows.append(Row("stall", f"NOOP probe during {count} x {what}",
                        f"p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms", target=
                        "p99 < 100 ms, max < 500 ms", met=p99 < 0.1 and worst < 0.5,
                        note=f"{len(rtts)} probes; attackers told {', '.join(codes)}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", default="header,mime",
                        help=f"comma-separated, of {', '.join(ATTACKS)}")
    parser.add_argument("--count", type=int, default=10, help="attackers at once")
    args = parser.parse_args()
    from tests.services import run_clamd

    with tempfile.TemporaryDirectory(prefix="floodgate-stall-") as tmp, \
            contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        clamd = stack.enter_context(run_clamd(workdir / "clamd", stream_max_length="30M"))
        r = stack.enter_context(relay(Settings(workdir, quick=True), "stall",
                                      clamd=clamd.address, setup=[ALIASES]))
        for row in attack_rows(r.port, args.attack.split(","), args.count):
            print(f"{row.measurement}: {row.value} ({row.note}); met: {row.met}", flush=True)


if __name__ == "__main__":
    main()
