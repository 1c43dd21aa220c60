"""The SMTP front end: aiosmtpd with Floodgate's handler and a few protocol fixes.

`FloodgateSMTP` adjusts aiosmtpd where an MX needs it (enhanced status codes on every
reply, EHLO in one write, no AUTH, "no valid recipients"); `RelayHandler` makes the
decisions: it runs the filter pipeline, records every decision and spools accepted mail.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from blocklist.hosts import host_key
from blocklist.scoring import BlockState
from filters.base import Action, Context, Stage, Verdict
from filters.headers import apply_headers
from relay import replies
from relay.events import EventRecord, EventWriter
from relay.logs import kv
from relay.pipeline import Pipeline
from relay.spool import Envelope as SpoolEnvelope
from relay.spool import Spool, new_queue_id

log = logging.getLogger("floodgate.smtp")

TOO_MANY_RCPTS = Verdict.tempfail(452, "4.5.3", "too_many_rcpts", "Too many recipients")
SPOOL_FAILED = Verdict.tempfail(
    451, "4.3.0", "spool", "Cannot queue the message right now, try again later"
)
CONNECTED = Verdict.accept(220, "2.0.0", "connect", "connected")
NO_VALID_RCPTS = "554 5.5.1 Error: no valid recipients"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"


def queue_full(detail: str) -> Verdict:
    """Back-pressure: the spool is over its limit or the disk nearly full; mail waits."""
    return Verdict.tempfail(452, "4.3.1", "queue_full",
                            "Insufficient system storage, try again later", detail=detail)


class RelaySession(Session):
    """aiosmtpd's session plus what the relay remembers about the client."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__(loop)
        self.sid = uuid.uuid4().hex[:12]
        self.client = ""
        self.helo = ""
        self.rcpt_attempts = 0


class FloodgateSMTP(SMTP):
    """One client connection."""

    def __init__(self, handler: RelayHandler, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.relay = handler
        self._greeted = False
        self._collect: list[bytes] | None = None

    def _create_session(self) -> RelaySession:
        return RelaySession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        session = self.session
        assert isinstance(session, RelaySession)
        peer = session.peer
        session.client = peer[0] if isinstance(peer, tuple) else str(peer)
        self.relay.connections.add(self)

    async def _handle_client(self) -> None:
        """Connect-time checks run before the greeting: a refused host sees only a 554."""
        session = self.session
        assert isinstance(session, RelaySession)
        verdict = await self.relay.on_connect(session)
        if verdict.action != Action.ACCEPT:
            self._greeted = True
            if self.transport is not None:
                self._writer.write(verdict.reply.encode() + b"\r\n")
                self.transport.close()
            return
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        self.relay.disconnected(self)
        super().connection_lost(error)

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    def close_with(self, reply: str) -> None:
        """Say `reply` (a 421) and hang up; used at shutdown."""
        self.relay.disconnected(self)
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(reply.encode() + b"\r\n")
            self.transport.close()

    async def push(self, status: Any) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        if not self._greeted:  # the 220 greeting carries no enhanced code
            self._greeted = True
        elif self._collect is not None:  # EHLO/HELO lines: gathered, written once
            self._collect.append(text.encode("utf-8", "surrogateescape") + b"\r\n")
            return
        else:
            text, reason, stage = replies.classify(text)
            if reason is not None:
                self.relay.protocol_refusal(self, text, reason, stage)
        await super().push(text)

    async def _greeting_reply(self, method: Callable[[str], Any], arg: str) -> None:
        """Run HELO/EHLO, sending its lines in one write: simple clients misread a
        multi-line reply that arrives in pieces."""
        self._collect = []
        try:
            await method(arg)
        finally:
            lines, self._collect = self._collect, None
        if lines:
            self._writer.write(b"".join(lines))
            await self._writer.drain()

    async def smtp_EHLO(self, arg: str) -> None:
        await self._greeting_reply(super().smtp_EHLO, arg)

    async def smtp_HELO(self, arg: str) -> None:
        await self._greeting_reply(super().smtp_HELO, arg)

    async def smtp_DATA(self, arg: str) -> None:
        session = self.session
        assert isinstance(session, RelaySession)
        if (self.envelope is not None and self.envelope.mail_from is not None
                and not self.envelope.rcpt_tos and session.rcpt_attempts and not arg):
            await self.push(NO_VALID_RCPTS)
            return
        await super().smtp_DATA(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push("502 5.5.1 AUTH not available on this MX")

    def _set_rset_state(self) -> None:
        super()._set_rset_state()
        if isinstance(self.session, RelaySession):
            self.session.rcpt_attempts = 0


class RelayHandler:
    """aiosmtpd hooks: decide, record, spool."""

    def __init__(self, *, node: str, hostname: str, pipeline: Pipeline, spool: Spool,
                 events: EventWriter, max_recipients: int, ipv6_prefix: int = 64,
                 gate: Callable[[str], BlockState | None] = lambda client: None,
                 protected: Callable[[str], str | None] = lambda client: None):
        self.node = node
        self.hostname = hostname
        self.pipeline = pipeline
        self.spool = spool
        self.events = events
        self.max_recipients = max_recipients
        self.ipv6_prefix = ipv6_prefix
        self.gate = gate
        self.protected = protected
        self.connections: set[FloodgateSMTP] = set()
        # Why new mail must wait (spool or disk full), or None; set by the delivery service.
        self.queue_full: Callable[[], str | None] = lambda: None
        # Counts each decision (stage, action, reason) for metrics; set by the server.
        self.on_decision: Callable[[str, str, str], None] = lambda *decision: None

    # -- recording ---------------------------------------------------------------------

    def record(self, session: RelaySession, envelope: Envelope | None, stage: str,
               verdict: Verdict, *, recipient: str = "", size: int | None = None,
               queue_id: str = "") -> None:
        """One decision: an event row for the store and a log line for the operator."""
        sender = envelope.mail_from if envelope is not None and envelope.mail_from else ""
        self.events.emit(EventRecord(
            ts=EventRecord.now(), node=self.node, client=session.client,
            host=host_key(session.client, self.ipv6_prefix), stage=stage,
            action=verdict.action.value, reason=verdict.reason, code=verdict.code,
            helo=session.helo[:255], sender=sender[:320], recipient=recipient,
            detail=verdict.detail, size=size, queue_id=queue_id,
        ))
        self.on_decision(stage, verdict.action.value, verdict.reason)
        log.info("decision %s", kv(
            session=session.sid, client=session.client, stage=stage,
            action=verdict.action.value, reason=verdict.reason, code=verdict.code,
            helo=session.helo, sender=f"<{sender}>" if envelope is not None else None,
            rcpt=recipient, size=size, queue_id=queue_id, detail=verdict.detail,
        ))

    async def on_connect(self, session: RelaySession) -> Verdict:
        """The gate (active blocks), then the CONNECT filters (DNSBL) unless protected."""
        verdict: Verdict | None = None
        block = self.gate(session.client)
        if block is not None:
            verdict = Verdict.reject(
                554, "5.7.1", "blocked",
                f"Service unavailable; client [{session.client}] is blocked until "
                f"{block.expires.strftime('%Y-%m-%d %H:%M UTC')}", detail=block.network)
        elif not self.protected(session.client):
            ctx = Context(client=session.client)
            verdict = await self.pipeline.run(Stage.CONNECT, ctx)
        if verdict is None or verdict.action == Action.ACCEPT:
            verdict = CONNECTED
        self.record(session, None, Stage.CONNECT, verdict)
        return verdict

    def disconnected(self, conn: FloodgateSMTP) -> None:
        self.connections.discard(conn)

    def protocol_refusal(self, conn: FloodgateSMTP, reply: str, reason: str, stage: str) -> None:
        session = conn.session
        if not isinstance(session, RelaySession):
            return
        code = int(reply[:3])
        status, _, text = reply[4:].partition(" ")
        self.record(session, conn.envelope, stage,
                    Verdict.reject(code, status, reason, text, detail=text))

    # -- aiosmtpd hooks ------------------------------------------------------------------

    async def handle_HELO(self, server: FloodgateSMTP, session: RelaySession,
                          envelope: Envelope, hostname: str) -> str:
        session.helo = hostname
        session.host_name = hostname
        return f"250 {self.hostname}"

    async def handle_EHLO(self, server: FloodgateSMTP, session: RelaySession,
                          envelope: Envelope, hostname: str, responses: list[str]) -> list[str]:
        session.helo = hostname
        session.host_name = hostname
        keep = [r for r in responses[:-1] if not r.startswith("250-AUTH")]
        return [*keep, "250-PIPELINING", "250 ENHANCEDSTATUSCODES"]

    async def handle_MAIL(self, server: FloodgateSMTP, session: RelaySession,
                          envelope: Envelope, address: str, mail_options: list[str]) -> str:
        full = self.queue_full()
        if full is not None:
            verdict = queue_full(full)
            self.record(session, envelope, Stage.MAIL, verdict)
            return verdict.reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: FloodgateSMTP, session: RelaySession,
                          envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        session.rcpt_attempts += 1
        full = self.queue_full()
        if full is not None:
            verdict: Verdict | None = queue_full(full)
        elif len(envelope.rcpt_tos) >= self.max_recipients:
            verdict = TOO_MANY_RCPTS
        else:
            ctx = Context(client=session.client, helo=session.helo,
                          mail_from=envelope.mail_from or "", rcpt=address,
                          rcpts=envelope.rcpt_tos)
            verdict = await self.pipeline.run(Stage.RCPT, ctx)
        if verdict is None:  # nothing at RCPT has an opinion: never an open relay
            verdict = Verdict.reject(554, "5.7.1", "relay_denied", "Relay access denied")
        self.record(session, envelope, Stage.RCPT, verdict, recipient=address)
        if verdict.action == Action.ACCEPT:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return verdict.reply

    async def handle_VRFY(self, server: FloodgateSMTP, session: RelaySession,
                          envelope: Envelope, address: str) -> str:
        return "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"

    async def handle_DATA(self, server: FloodgateSMTP, session: RelaySession,
                          envelope: Envelope) -> str:
        data = envelope.original_content or b""
        rcpts = ",".join(envelope.rcpt_tos)
        ctx = Context(client=session.client, helo=session.helo,
                      mail_from=envelope.mail_from or "", rcpts=list(envelope.rcpt_tos),
                      content=data)
        verdict = await self.pipeline.run(Stage.DATA, ctx)
        if verdict is not None and verdict.action != Action.ACCEPT:
            self.record(session, envelope, Stage.DATA, verdict, recipient=rcpts, size=len(data))
            return verdict.reply
        notes = ""
        if Stage.DATA in self.pipeline.stages:
            # strip forged X-Spam-*/X-Floodgate-* fields even when no filter added any
            headers = verdict.headers if verdict is not None else ()
            data = apply_headers(data, headers)
            notes = " ".join(f"{name}={value}" for name, value in headers
                             if name in ("X-Spam-Score", "X-Floodgate-Unscanned"))
            if verdict is not None:
                notes = f"{verdict.reason} {notes}".strip()
        queue_id = new_queue_id()
        message = self.received_header(session, envelope, queue_id) + data
        spooled = SpoolEnvelope(
            queue_id=queue_id, mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos), client=session.client, helo=session.helo,
            node=self.node, received=time.time(), size=len(message),
            mail_options=list(envelope.mail_options),
        )
        try:
            await asyncio.to_thread(self.spool.write, spooled, message)
        except OSError as e:
            log.error("spool write failed %s", kv(queue_id=queue_id, error=e.strerror or e))
            failed = Verdict.tempfail(SPOOL_FAILED.code, SPOOL_FAILED.status, "spool",
                                      SPOOL_FAILED.text, detail=str(e.strerror or e))
            self.record(session, envelope, Stage.DATA, failed, recipient=rcpts, size=len(data))
            return failed.reply
        accepted = Verdict.accept(250, "2.0.0", "accepted", f"Ok: queued as {queue_id}",
                                  detail=notes)
        self.record(session, envelope, Stage.DATA, accepted, recipient=rcpts,
                    size=len(message), queue_id=queue_id)
        return accepted.reply

    async def handle_exception(self, error: Exception) -> str:
        log.error("session error", exc_info=error)
        return "451 4.3.0 Internal error, try again later"

    def received_header(self, session: RelaySession, envelope: Envelope, queue_id: str) -> bytes:
        """The RFC 5321 4.4 trace line, folded to stay well under 78 columns."""
        proto = "ESMTPS" if session.ssl else ("ESMTP" if session.extended_smtp else "SMTP")
        helo = _clean(session.helo) or "unknown"
        lines = [f"Received: from {helo} ([{session.client}])",
                 f"\tby {self.hostname} (Floodgate) with {proto} id {queue_id}"]
        if len(envelope.rcpt_tos) == 1:
            lines.append(f"\tfor <{_clean(envelope.rcpt_tos[0])}>;")
        else:
            lines[-1] += ";"
        lines.append(f"\t{email.utils.format_datetime(email.utils.localtime())}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _clean(text: str) -> str:
    """Keep a client-supplied string from breaking the header it is written into."""
    return "".join(c for c in text if c.isprintable() and c not in "()\\")[:255]
