"""Bounces: what a recipient that will not be delivered is told as (a permanent reply, or
an expired lifetime), and the DSN to its sender (RFC 3464), spooled like any message."""

from __future__ import annotations

import asyncio
import logging

from relay.delivery import dsn
from relay.delivery.spool import PENDING, Envelope, Spool
from relay.delivery.work import Result
from relay.logs import kv

log = logging.getLogger("floodgate.delivery")


def failure(rcpt: str, result: Result, now: float) -> dsn.Failure:
    """A bounced recipient: a still-temporary reply means its lifetime expired (4.4.7)."""
    status = dsn.status_of(result.reply)
    reply = result.reply
    if result.status == PENDING:
        status, reply = "4.4.7", f"delivery time expired; last reply: {reply}"
    return dsn.Failure(rcpt, status, reply, result.hop, now)


class Bounces:
    def __init__(self, spool: Spool, hostname: str, node: str):
        self.spool = spool
        self.hostname = hostname
        self.node = node

    async def send(self, envelope: Envelope, failures: list[dsn.Failure]) -> str | None:
        """Queue a DSN for `failures`: its queue id once it is on disk ("" when none is
        due), None when it could not be written. The id goes into the bounce events, so
        `floodgate trace` follows the DSN too."""
        if not dsn.wants_dsn(envelope):
            log.info("no DSN for the null sender %s", kv(queue_id=envelope.queue_id,
                                                        rcpts=len(failures)))
            return ""
        try:
            _, message = await asyncio.to_thread(self.spool.read, envelope.queue_id)
            report, body = dsn.build(envelope, message, failures, hostname=self.hostname,
                                     node=self.node)
            await asyncio.to_thread(self.spool.write, report, body)
        except FileNotFoundError:
            return ""
        except OSError as e:
            log.error("cannot queue a DSN %s", kv(queue_id=envelope.queue_id, error=e))
            return None
        log.info("dsn queued %s", kv(queue_id=envelope.queue_id, dsn=report.queue_id,
                                     to=f"<{envelope.mail_from}>", rcpts=len(failures)))
        return report.queue_id
