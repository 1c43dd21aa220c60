"""A next hop that notes when each message arrived, for end-to-end latency (scenario 9).

    python -m scripts.benchlib.stampsink --port N --out FILE

Appends `<X-Bench-Seq> <time.monotonic()>` to FILE for every message (CLOCK_MONOTONIC is
one clock for every process of the machine, so the load generator can subtract its own
start times). A process of its own: the generator's loop is busy under load, and a stamp
taken there would be late by its backlog, not the relay's.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import time
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

SEQ = re.compile(rb"^X-Bench-Seq: *(\S+)", re.MULTILINE | re.IGNORECASE)


class Stamp:
    def __init__(self, out: Any):
        self.out = out

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        now = time.monotonic()
        data = envelope.original_content or b""
        head = data[:data.find(b"\r\n\r\n")] if b"\r\n\r\n" in data else data[:8192]
        m = SEQ.search(head)
        seq = m.group(1).decode(errors="replace") if m else "-"
        self.out.write(f"{seq} {now:.6f} {len(envelope.rcpt_tos)}\n")
        self.out.flush()
        return "250 2.0.0 stamped"


async def main(port: int, path: str) -> None:
    loop = asyncio.get_running_loop()
    with open(path, "a") as out:
        server = await loop.create_server(
            lambda: SMTP(Stamp(out), hostname="sink.bench.test", decode_data=False,
                         data_size_limit=50 * 2**20),
            "127.0.0.1", port, reuse_address=True, backlog=1024)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print("ready", flush=True)
        await stop.wait()
        server.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    asyncio.run(main(args.port, args.out))
