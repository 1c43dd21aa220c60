"""`floodgate serve` with faults a real service will not make on demand, for tests only.

Run as `python -m tests.fault_relay -c FILE serve`. Markers in the traffic trigger them:
  EHLO boom.test                 handle_EHLO raises
  RCPT TO:<boom@...>             handle_RCPT raises
  header `X-Fault: data-hook`    handle_DATA raises
  header `X-Fault: eio`          the spool write fails as a failed fsync does (EIO)
  header `X-Fault: enospc`       the spool write finds the disk full
  header `X-Fault: slow-scan`    the DATA filters never answer (until the reply deadline)
  header `X-Fault: scanner-raises`  the clamav and spamassassin checks raise (a bug in them)
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from typing import Any

from filters.base import Context, Stage, Verdict
from filters.clamav import ClamAVFilter
from filters.spamassassin import SpamAssassinFilter
from relay.delivery import spool
from relay.smtp import handler as smtp
from relay.smtp import pipeline


def install() -> None:
    handler = smtp.RelayHandler
    ehlo, rcpt, data = handler.handle_EHLO, handler.handle_RCPT, handler.handle_DATA
    write, run = spool.Spool.write, pipeline.Pipeline.run

    async def handle_EHLO(self: Any, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        if hostname == "boom.test":
            raise RuntimeError("injected fault in handle_EHLO")
        return await ehlo(self, server, session, envelope, hostname, responses)

    async def handle_RCPT(self: Any, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if address.startswith("boom@"):
            raise RuntimeError("injected fault in handle_RCPT")
        return await rcpt(self, server, session, envelope, address, options)

    async def handle_DATA(self: Any, server: Any, session: Any, envelope: Any) -> str:
        if b"X-Fault: data-hook" in (envelope.original_content or b""):
            raise RuntimeError("injected fault in handle_DATA")
        return await data(self, server, session, envelope)

    def spool_write(self: Any, envelope: Any, *parts: bytes) -> Any:
        whole = b"".join(parts)
        if b"X-Fault: eio" in whole:
            raise OSError(errno.EIO, "Input/output error (injected fsync failure)")
        if b"X-Fault: enospc" in whole:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(self, envelope, *parts)

    async def pipeline_run(self: Any, stage: Stage, ctx: Any) -> Any:
        if stage == Stage.DATA and b"X-Fault: slow-scan" in ctx.content:
            await asyncio.Event().wait()  # a scanner that never answers
        return await run(self, stage, ctx)

    for scanner in (ClamAVFilter, SpamAssassinFilter):
        scanner.check = raising(scanner.check)  # type: ignore[method-assign]

    handler.handle_EHLO = handle_EHLO  # type: ignore[method-assign]
    handler.handle_RCPT = handle_RCPT  # type: ignore[method-assign]
    handler.handle_DATA = handle_DATA  # type: ignore[method-assign]
    spool.Spool.write = spool_write  # type: ignore[method-assign]
    pipeline.Pipeline.run = pipeline_run  # type: ignore[method-assign]


def raising(check: Any) -> Any:
    """`check`, raising what no scanner catches when the message asks for it."""

    async def check_or_raise(self: Any, ctx: Context) -> Verdict | None:
        if b"X-Fault: scanner-raises" in ctx.content:
            raise RuntimeError(f"injected fault in the {self.name} check")
        return await check(self, ctx)

    return check_or_raise


if __name__ == "__main__":
    install()
    from relay.cli.main import main

    sys.argv[0] = "floodgate"
    main()
