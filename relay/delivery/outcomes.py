"""Outcomes: each recipient's reply written into its message's progress and told as an event
and a log line. Failures are gathered over an attempt and become one DSN; a failure whose DSN
cannot be spooled stays pending, to fail (and be told) again later."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from blocklist.hosts import host_key
from relay.config import Config
from relay.delivery import dsn
from relay.delivery.bounces import Bounces, failure
from relay.delivery.spool import BOUNCED, DELIVERED, PENDING
from relay.delivery.work import Entry, Result
from relay.events.record import EventRecord
from relay.events.writer import EventWriter
from relay.logs import kv

log = logging.getLogger("floodgate.delivery")

_STATUS = re.compile(r"([245])\.([0-7])\.\d{1,3}")


def status_class(status: str) -> str:
    """`5.1.1` -> `5.1`: an enhanced status code's class and subject (RFC 3463), the few
    values a metric label may take (a remote server's detail codes are many, and its own);
    `other` for anything else."""
    m = _STATUS.fullmatch(status)
    return f"{m.group(1)}.{m.group(2)}" if m else "other"


class Outcomes:
    def __init__(self, config: Config, events: EventWriter, bounces: Bounces):
        self.max_lifetime = config.delivery.max_lifetime
        self.ipv6_prefix = config.store.ipv6_prefix
        self.node = config.relay.node
        self.events = events
        self.bounces = bounces
        # told each recipient's outcome (delivered, deferred or bounced) and the class of
        # its status (`status_class`): the metrics
        self.on_outcome: Callable[[str, str], None] = lambda outcome, status: None

    def apply(self, entry: Entry, results: dict[str, Result], now: float) -> None:
        """One unit's replies: delivered and deferred recipients are told at once, failed
        ones (a 5xx, or any reply past max_lifetime) are gathered for `settle_failures`."""
        envelope = entry.envelope
        expired = now - envelope.received >= self.max_lifetime
        for rcpt, result in results.items():
            rs = entry.state.recipients.get(rcpt)
            if rs is None or rs.status != PENDING:
                continue
            rs.attempts += 1
            rs.reply = result.reply
            rs.hop = result.hop
            if result.status == DELIVERED:
                rs.status = DELIVERED
                self._event(entry, rcpt, "accept", "delivered", result)
                self.on_outcome("delivered", status_class(dsn.status_of(result.reply, "2.0.0")))
            elif result.status == BOUNCED or expired:
                failed = failure(rcpt, result, now)
                rs.status = BOUNCED
                rs.reply = failed.diagnostic
                entry.failures.append(failed)
            else:
                self._event(entry, rcpt, "tempfail", "deferred", result)
                self.on_outcome("deferred", status_class(dsn.status_of(result.reply, "4.0.0")))

    async def settle_failures(self, entry: Entry) -> None:
        """After a message's attempt: one DSN for its failures, then each is told."""
        failures, entry.failures = entry.failures, []
        if not failures:
            return
        dsn_id = await self.bounces.send(entry.envelope, failures)
        if dsn_id is None:
            for f in failures:  # no DSN on disk: keep them pending, to fail again later
                entry.state.recipients[f.recipient].status = PENDING
            return
        for f in failures:
            self._event(entry, f.recipient, "reject", "bounced",
                        Result(BOUNCED, f.diagnostic, f.remote_mta), dsn_id=dsn_id)
            self.on_outcome("bounced", status_class(f.status))

    def _event(self, entry: Entry, rcpt: str, action: str, reason: str,
               result: Result, dsn_id: str = "") -> None:
        """`dsn_id`: the queue id of the DSN sent for a bounce (`floodgate trace` follows it)."""
        envelope = entry.envelope
        code = int(result.reply[:3]) if result.reply[:3].isdigit() else 0
        detail = f"hop={result.hop} reply={result.reply}" if result.hop else result.reply
        if dsn_id:
            detail = f"{detail} dsn={dsn_id}"
        self.events.emit(EventRecord(
            ts=EventRecord.now(), node=self.node, client=envelope.client,
            host=host_key(envelope.client, self.ipv6_prefix) if envelope.client
            else "", helo=envelope.helo[:255], stage="delivery",
            action=action, reason=reason, code=code, sender=envelope.mail_from[:320],
            recipient=rcpt, detail=detail, size=envelope.size, queue_id=envelope.queue_id,
        ))
        log.info("delivery %s", kv(
            queue_id=envelope.queue_id, status=reason, to=f"<{rcpt}>", hop=result.hop,
            delay=f"{time.time() - envelope.received:.1f}", reply=result.reply,
            attempts=entry.state.recipients[rcpt].attempts))
