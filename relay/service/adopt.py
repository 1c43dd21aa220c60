"""`floodgate policy` and `floodgate milter`: the relay's decisions for a Postfix that stays.

Each runs the relay's composition (Relay: store, snapshots, scanners, event writer, scorer)
without its SMTP listeners and delivery, and serves one Postfix-facing protocol on top of
the same RelayHandler, so a decision made for Postfix is the relay's own decision, with the
same reply and the same event.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from relay.config import Config
from relay.logs import kv
from relay.service.server import Relay, StartupError
from relay.smtp.milter import MilterServer
from relay.smtp.policy import MAX_LINE, PolicyDecider, PolicyServer

log = logging.getLogger("floodgate.adopt")

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def parse_listen(listen: str) -> tuple[str, int] | Path:
    """`HOST:PORT` ([v6]:PORT) or a unix socket path (anything with a slash)."""
    if "/" in listen:
        return Path(listen)
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise StartupError(f"--listen {listen!r}: HOST:PORT or /path/to/socket")
    return host.strip("[]"), int(port)


async def listen_on(listen: str, serve: Serve, limit: int = 1 << 16) -> asyncio.AbstractServer:
    where = parse_listen(listen)
    try:
        if isinstance(where, Path):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(where.lstat().st_mode):  # a stale socket of an earlier run
                    where.unlink()
            server = await asyncio.start_unix_server(serve, str(where), limit=limit)
            os.chmod(where, 0o666)  # Postfix's smtpd runs as its own user
            return server
        host, port = where
        return await asyncio.start_server(serve, host, port, limit=limit, reuse_address=True,
                                          backlog=1024)
    except OSError as e:
        why = "address already in use" if e.errno == errno.EADDRINUSE else e.strerror
        raise StartupError(f"cannot listen on {listen}: {why}") from e


async def run_front(config: Config, kind: str, listen: str, path: str | None = None) -> None:
    """Serve `kind` ("policy" or "milter") until SIGTERM; SIGHUP reloads as for `serve`."""
    relay = Relay(config, path=path)
    # Postfix queues the mail: the relay's spool pressure has no say here
    relay.handler.queue_full = lambda: None
    relay.handler.null_sender_full = lambda client: None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, relay.request_reload)
    await relay.start_decisions()
    if kind == "policy":
        server = await listen_on(listen, PolicyServer(PolicyDecider(relay.handler)),
                                 limit=MAX_LINE)
    else:
        server = await listen_on(listen, MilterServer(relay.handler,
                                                      config.relay.max_message_size))
    relay.ready.set()
    log.info("ready %s", kv(service=kind, listen=listen, node=config.relay.node,
                           domains=",".join(sorted(relay.hosted)),
                           aliases=len(relay.snapshot.book)))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await relay.stop_decisions()


def serve_front(config: Config, kind: str, listen: str, path: str | None = None) -> None:
    asyncio.run(run_front(config, kind, listen, path))
