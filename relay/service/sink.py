"""`floodgate sink`: a minimal SMTP server that accepts everything and files it.

A stand-in for a hosted domain's own server, for the demo and for trying a configuration
before pointing it at production: every message lands as one `.eml` file (with the envelope
in `X-Sink-*` headers), written atomically.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

_counter = itertools.count(1)


class SinkHandler:
    def __init__(self, directory: Path):
        self.directory = directory

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        name = f"{time.time_ns()}-{next(_counter)}.eml"
        head = (f"X-Sink-Mail-From: <{envelope.mail_from}>\r\n"
                f"X-Sink-Rcpt-To: {', '.join(f'<{r}>' for r in envelope.rcpt_tos)}\r\n")
        data = head.encode() + (envelope.original_content or b"")
        await asyncio.to_thread(_write_atomically, self.directory / name, data)
        return f"250 2.0.0 Ok: filed as {name}"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def run_sink(host: str, port: int, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    handler = SinkHandler(directory)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.floodgate", data_size_limit=None), host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"sink listening on {host}:{port}, filing messages in {directory}", flush=True)
    await stop.wait()
    server.close()
