#!/usr/bin/env python3
"""Benchmark: does a large message stall the relay's event loop for other clients?

Starts `floodgate serve` (SQLite, catch-all domain, delivery off), then sends BIG-byte
messages (default 20 MB, `--concurrent` at once) while a probe client runs NOOP round trips
and small transactions on another connection. Reports the probe's worst and median reply
times (the loop lag other clients see), the big messages' own times, and the relay's peak
RSS (VmHWM), optionally with `--idle N` idle connections held open.
Aiosmtpd issue #293 is the reference: its per-line DATA loop stalled the loop for seconds.
Run: .venv/bin/python scripts/bench_dataloop.py [--size 20000000] [--concurrent 1] [--idle 0]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[relay]
hostname = "mx1.example.net"
listen = ["127.0.0.1:{port}"]
max_message_size = {limit}
spool_dir = "spool"
{limits}
[store]
url = "sqlite:///{dir}/bench.db"
[delivery]
enabled = false
[domains."example.org"]
next_hop = "127.0.0.1:1"
catch_all = true
"""


DEBUG_DRIVER = """
import asyncio, sys
import relay.service.server as server
plain = server.run
async def run(config, worker=None):
    asyncio.get_running_loop().slow_callback_duration = %r
    await plain(config, worker)
server.run = run
from relay.cli.main import main
sys.argv[0] = "floodgate"
main()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reply(sock: socket.socket, buf: bytearray) -> bytes:
    """One complete SMTP reply (the last line of a multi-line one)."""
    while True:
        for m in re.finditer(rb"(?m)^\d{3} [^\r\n]*\r\n", bytes(buf)):
            del buf[: m.end()]
            return m.group(0)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk


def session(port: int) -> tuple[socket.socket, bytearray]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    buf = bytearray()
    reply(sock, buf)
    sock.sendall(b"EHLO bench.test\r\n")
    reply(sock, buf)
    return sock, buf


def send_message(port: int, body: bytes) -> float:
    sock, buf = session(port)
    started = time.monotonic()
    sock.sendall(b"MAIL FROM:<s@bench.test>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n")
    for _ in range(3):
        reply(sock, buf)
    sock.sendall(body + b".\r\n")
    answer = reply(sock, buf)
    took = time.monotonic() - started
    sock.close()
    if not answer.startswith(b"250"):
        raise RuntimeError(answer)
    return took


def probe(port: int, stop: threading.Event, lags: list[float], small_times: list[float]) -> None:
    """NOOP round trips, and every 20th a whole small transaction on a new connection
    (timed apart: its reply waits for an fsync, which is not loop lag)."""
    sock, buf = session(port)
    n = 0
    small = b"Subject: small\r\n\r\nsmall\r\n"
    while not stop.is_set():
        t = time.monotonic()
        sock.sendall(b"NOOP\r\n")
        reply(sock, buf)
        lags.append(time.monotonic() - t)
        n += 1
        if n % 20 == 0:
            t = time.monotonic()
            send_message(port, small)
            small_times.append(time.monotonic() - t)
    sock.close()


def vmhwm(pid: int) -> int:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) * 1024 if m else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=20_000_000)
    ap.add_argument("--concurrent", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the relay's directory and log")
    ap.add_argument("--slow-callbacks", type=float, default=0, metavar="MS",
                    help="run the relay on asyncio's loop in debug mode and print every "
                         "callback that held the loop longer than MS (the stalls, server-side)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="floodgate-bench-"))
    port = free_port()
    limits = ""
    if (ROOT / "relay" / "hardening_config.py").exists():  # no per-client limits on loopback
        limits = "[limits]\nexempt = []\nmax_per_client = 0\nconnection_rate = 0\n"
    (tmp / "bench.toml").write_text(CONFIG.format(port=port, limit=args.size * 2, dir=tmp,
                                                  limits=limits))
    log = open(tmp / "relay.log", "wb")  # noqa: SIM115 - handed to the child
    cmd = [sys.executable, "-m", "relay.cli"]
    env = dict(os.environ)
    if args.slow_callbacks:
        cmd = [sys.executable, "-c", DEBUG_DRIVER % (args.slow_callbacks / 1000)]
        env.update(FLOODGATE_EVENT_LOOP="asyncio", PYTHONASYNCIODEBUG="1")
    proc = subprocess.Popen([*cmd, "-c", str(tmp / "bench.toml"), "serve"], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while b" ready " not in (tmp / "relay.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((tmp / "relay.log").read_text())
            time.sleep(0.05)
        idle = [session(port)[0] for _ in range(args.idle)]
        line = b"x" * 76 + b"\r\n"
        body = b"Subject: big\r\n\r\n" + line * (args.size // len(line))
        base: list[float] = []
        base_small: list[float] = []
        stop = threading.Event()
        t = threading.Thread(target=probe, args=(port, stop, base, base_small))
        t.start()
        time.sleep(1.0)  # a quiet baseline for the probe
        stop.set()
        t.join()
        lags: list[float] = []
        smalls: list[float] = []
        stop = threading.Event()
        t = threading.Thread(target=probe, args=(port, stop, lags, smalls))
        t.start()
        big: list[float] = []
        for _ in range(args.rounds):
            senders = [threading.Thread(target=lambda: big.append(send_message(port, body)))
                       for _ in range(args.concurrent)]
            for s in senders:
                s.start()
            for s in senders:
                s.join()
        stop.set()
        t.join()
        for s in idle:
            s.close()
        mb = len(body) / 1e6
        print(f"message {mb:.1f} MB x {args.concurrent} concurrent x {args.rounds} rounds, "
              f"{args.idle} idle connections")
        print(f"NOOP idle:     median {statistics.median(base) * 1000:.2f} ms, "
              f"max {max(base) * 1000:.2f} ms ({len(base)} samples)")
        print(f"NOOP loaded: median {statistics.median(lags) * 1000:.2f} ms, "
              f"max {max(lags) * 1000:.2f} ms ({len(lags)} samples)")
        print(f"small transactions: idle max {max(base_small) * 1000:.0f} ms, loaded median "
              f"{statistics.median(smalls) * 1000:.0f} ms, max {max(smalls) * 1000:.0f} ms")
        print(f"big message:  median {statistics.median(big):.2f} s "
              f"({mb * args.concurrent / statistics.median(big):.0f} MB/s per round)")
        print(f"relay peak RSS: {vmhwm(proc.pid) / 2**20:.0f} MiB")
        if args.slow_callbacks:
            text = (tmp / "relay.log").read_text()
            stalls = sorted(float(x) for x in re.findall(r" took (\d+\.\d+) seconds", text))
            print(f"server-side stalls over {args.slow_callbacks:g} ms: {len(stalls)}, worst "
                  f"{(stalls[-1] if stalls else 0) * 1000:.0f} ms (startup included)")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        if args.keep:
            print(f"relay log: {tmp / 'relay.log'}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
