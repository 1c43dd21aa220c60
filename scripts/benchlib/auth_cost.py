"""CPU per message of DKIM and ARC verification (relay/auth), with the keys in a warm
cache and with every key asked of a real nsd, and the longest event-loop stall meanwhile.

    python -m scripts.benchlib.auth_cost [--messages N]

CPU is this process's (all threads: the loop and the verification workers) plus, with a
process pool, its worker's, per message, for verify_dkim + verify_arc run one message after
another. The stall is the longest gap between turns of a ticker on the same loop: what any
other SMTP session would have waited, as the least of the longest gaps of REPEATS runs (the
host's scheduler adds random ones). The first row is the ticker on an idle loop: the stall
the shared host's scheduler alone causes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

import dkim

from relay.auth.arc import verify_arc
from relay.auth.dkim import verify_dkim
from relay.auth.lookup import TxtLookup
from tests.dkim_support import MESSAGE, Key, ed25519_key, rsa_key, txt_lookup
from tests.dns_server import run_nsd

DOMAIN, LIST = b"example.test", b"lists.test"
# the stall reported is the least of the longest gaps of this many runs: the host's
# scheduler stalls a loop at random, what the verification does stalls every run
REPEATS = 5


def messages(rsa: Key, ed: Key, big: Key) -> dict[str, bytes]:
    body = MESSAGE + b"A line of an ordinary newsletter, as long as most lines are.\r\n" * 80

    def signed(key: Key, selector: bytes, message: bytes, domain: bytes = DOMAIN) -> bytes:
        return dkim.sign(message, selector, domain, key.private,
                         signature_algorithm=key.algorithm) + message

    def sealed(message: bytes, results: str) -> bytes:
        ar = f"Authentication-Results: lists.test; {results}\r\n".encode()
        return b"".join(dkim.arc_sign(ar + message, b"arc", LIST, rsa.private, LIST)) \
            + ar + message

    def relaxed(key: Key, message: bytes) -> bytes:
        return dkim.sign(message, b"rsa", DOMAIN, key.private,
                         canonicalize=(b"relaxed", b"relaxed")) + message

    listed = sealed(signed(rsa, b"rsa", body), "dkim=pass header.d=example.test")
    return {
        "unsigned, 5 kB": body,
        "DKIM rsa-2048, 5 kB": signed(rsa, b"rsa", body),
        "DKIM ed25519, 5 kB": signed(ed, b"ed", body),
        "DKIM rsa-4096, 5 kB": signed(big, b"big", body),
        "DKIM rsa-2048 + ARC 1 hop, 5 kB": listed,
        "DKIM rsa + ed25519 + ARC 2 hops, 5 kB": sealed(
            signed(ed, b"ed", listed), "arc=pass; dkim=pass header.d=example.test"),
        "DKIM rsa-2048, 1 MB": signed(rsa, b"rsa", MESSAGE + (b"y" * 76 + b"\r\n") * 13_000),
        "DKIM rsa-2048, 20 MB": signed(rsa, b"rsa", MESSAGE + (b"y" * 76 + b"\r\n") * 260_000),
        "DKIM rsa-2048 + ARC 1 hop, 1 MB, relaxed body": sealed(
            relaxed(rsa, MESSAGE + (b"y" * 76 + b"\r\n") * 13_000),
            "dkim=pass header.d=example.test"),
    }


class Ticker:
    """The longest gap between two turns of the loop while it runs."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._last = 0.0
        self._stopped = False

    def start(self) -> None:
        self._last = time.perf_counter()
        asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> float:
        self._stopped = True
        return self.longest

    def _tick(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._last)
        self._last = now
        if not self._stopped:
            asyncio.get_running_loop().call_soon(self._tick)


def worker_cpu(executor: Executor | None) -> float:
    """CPU seconds of a process pool's workers so far (0 for threads)."""
    total = 0.0
    for pid in getattr(executor, "_processes", None) or {}:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def measure(message: bytes, lookup: TxtLookup, count: int,
                  executor: Executor | None = None) -> tuple[float, float]:
    """(CPU ms per message, longest loop stall in ms)."""
    await verify_dkim(message, lookup, executor=executor)   # warm the workers and imports
    await verify_arc(message, lookup, executor=executor)
    stalls = []
    cpu = time.process_time() + worker_cpu(executor)
    for group in range(REPEATS):
        ticker = Ticker()
        ticker.start()
        for _ in range(group, count, REPEATS):
            await verify_dkim(message, lookup, executor=executor)
            await verify_arc(message, lookup, executor=executor)
        stalls.append(ticker.stop())
    spent = time.process_time() + worker_cpu(executor) - cpu
    return spent / count * 1000, min(stalls) * 1000


async def idle(seconds: float) -> float:
    stalls = []
    for _ in range(REPEATS):
        ticker = Ticker()
        ticker.start()
        await asyncio.sleep(seconds / REPEATS)
        stalls.append(ticker.stop())
    return min(stalls) * 1000


async def pooled(message: bytes, lookup: TxtLookup, count: int) -> tuple[float, float]:
    with ProcessPoolExecutor(max_workers=1) as executor:
        return await measure(message, lookup, count, executor)


def cached(records: dict[str, list[bytes]]) -> Callable[[str], Awaitable[list[bytes]]]:
    async def lookup(name: str) -> list[bytes]:
        return records.get(name.rstrip(".").lower(), [])

    return lookup


async def fill(lookup: TxtLookup, names: list[str]) -> dict[str, list[bytes]]:
    return {n: await lookup(n) for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rsa, ed, big = rsa_key(Path(tmp)), ed25519_key(), rsa_key(Path(tmp), 4096)
        zones = {"example.test": [rsa.record("rsa"), ed.record("ed"), big.record("big")],
                 "lists.test": [rsa.record("arc")]}
        with run_nsd(Path(tmp), zones) as server:
            direct = txt_lookup(server.resolver())
            names = ["rsa._domainkey.example.test", "ed._domainkey.example.test",
                     "big._domainkey.example.test", "arc._domainkey.lists.test"]
            warm = cached(asyncio.run(fill(direct, names)))
            print("| message | CPU/msg, warm cache | stall | CPU/msg, every key from nsd "
                  "| stall | CPU/msg, warm, process pool | stall |\n"
                  "|---|---|---|---|---|---|---|")
            print(f"| (idle loop, 2 s) | | {asyncio.run(idle(2.0)):.1f} ms | | | | |")
            for label, message in messages(rsa, ed, big).items():
                count = max(REPEATS, args.messages // 20) if "MB" in label else args.messages
                w_cpu, w_stall = asyncio.run(measure(message, warm, count))
                d_cpu, d_stall = asyncio.run(measure(message, direct, count))
                p_cpu, p_stall = asyncio.run(pooled(message, warm, count))
                print(f"| {label} | {w_cpu:.2f} ms | {w_stall:.1f} ms | {d_cpu:.2f} ms "
                      f"| {d_stall:.1f} ms | {p_cpu:.2f} ms | {p_stall:.1f} ms |", flush=True)


if __name__ == "__main__":
    main()
