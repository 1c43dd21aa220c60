"""Bare aiosmtpd servers, the baselines of scenarios 1, 2 and 6: no filters, no events, no
logging, same event loop as the relay.

    python -m scripts.benchlib.baseline --port N [--mode rcpt|connect] [--loop uvloop|asyncio]

`rcpt`: every RCPT gets 550 5.1.1 (a dictionary attack's whole experience of a good MX).
`connect`: every connection gets 554 before the greeting and is closed (the blocked host).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class RefuseRcpt:
    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        return "550 5.1.1 User unknown"


class RefuseAtConnect(SMTP):
    async def _handle_client(self) -> None:
        self._writer.write(b"554 5.7.1 Service unavailable; client blocked\r\n")
        self.transport.close()


async def main(port: int, mode: str) -> None:
    loop = asyncio.get_running_loop()
    cls = RefuseAtConnect if mode == "connect" else SMTP
    server = await loop.create_server(lambda: cls(RefuseRcpt(), hostname="baseline"),
                                      "127.0.0.1", port, reuse_address=True, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["rcpt", "connect"], default="rcpt")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args.port, args.mode))
    else:
        asyncio.run(main(args.port, args.mode))
