"""The SMTP front end: aiosmtpd with Floodgate's handler and a few protocol fixes.

`FloodgateSMTP` adjusts aiosmtpd where an MX needs it (enhanced status codes on every
reply, EHLO in one write, no AUTH, "no valid recipients"); `RelayHandler` makes the
decisions: it runs the filter pipeline, records every decision and spools accepted mail.

aiosmtpd's private members used here (pyproject.toml pins aiosmtpd for them; each has a
comment saying why): overridden `_create_session`, `_cb_client_connected`,
`_handle_client`, `_timeout_cb`, `_set_rset_state`; called or read `_writer`, `_reader`,
`_reset_timeout`, `_timeout_handle`, `_call_handler_hook`, `_set_post_data_state`; the
class-level `command_size_limits` replaced per connection; `smtp_DATA` rewritten whole; and
asyncio's `StreamReader._buffer` (here and in body.py). relay/smtp/fast.py copies
`SMTP.__init__`'s private state and overrides `_getaddr`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import email.utils
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from blocklist.hosts import host_key
from blocklist.scoring import OBSERVE_SOURCE, BlockState
from filters.address import normalise_domain
from filters.base import Action, Context, Stage, Verdict
from filters.headers import (
    head_end,
    oversized_field_async,
    prepend_headers,
    rewrite_head_async,
)
from relay.auth.authenticator import Authenticator
from relay.auth.check import AuthReport
from relay.config.limits import LimitsConfig
from relay.delivery.spool import NULL_SENDER_TEXT, Spool, new_queue_id
from relay.delivery.spool import Envelope as SpoolEnvelope
from relay.events.record import EventRecord, bounded_message_id
from relay.events.writer import EventWriter
from relay.hosts.limits import ConnectionLimiter
from relay.hosts.senders import Match, SenderLists
from relay.logs import kv, printable
from relay.reasons import Reason
from relay.smtp import replies
from relay.smtp.addresses import control_problem, is_postmaster, routing_problem, size_problem
from relay.smtp.body import Body, Budget, DataScanner, Problem, read_data
from relay.smtp.error_limits import SessionErrors
from relay.smtp.from_header import from_domain
from relay.smtp.hops import hop_count
from relay.smtp.message_id import message_id_of
from relay.smtp.observe import Observe, observed
from relay.smtp.pipeline import Pipeline

log = logging.getLogger("floodgate.smtp")

# (client, envelope sender, recipient) -> greylisted, greylist_passed, or None
Greylisting = Callable[[str, str, str], Awaitable[Verdict | None]]


# what RCPT's pipeline says of an address it could not find, or not find now
UNKNOWN_OR_UNVERIFIED = frozenset({"unknown_rcpt", "rcpt_unverified", "verify_limited"})


async def _no_greylist(client: str, sender: str, recipient: str) -> None:
    return None


TOO_MANY_RCPTS = Verdict.tempfail(452, "4.5.3", "too_many_rcpts", "Too many recipients")
SPOOL_FAILED = Verdict.tempfail(
    451, "4.3.0", "spool", "Cannot queue the message right now, try again later"
)
CONNECTED = Verdict.accept(220, "2.0.0", "connect", "connected")
TOO_MANY_HOPS = Verdict.reject(554, "5.4.6", "too_many_hops", "Too many hops")
NO_VALID_RCPTS = "554 5.5.1 Error: no valid recipients"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
# RFC 5321 4.5.3.1.4: 512 octets with the CRLF (aiosmtpd allows 512 without it).
COMMAND_LIMIT = 510
# SMTP smuggling: Postfix's smtpd_forbid_bare_newline answers commands this way and hangs
# up; in DATA (bare_newline = "reject", or a NUL in either mode) the message is refused
# whole, the session goes on (only <CRLF>.<CRLF> ended it, so the stream is still in step
# with the client).
BARE_IN_COMMAND = "550 5.5.2 Error: bare <CR> or <LF> received in a command"
BARE_IN_DATA = "550 5.6.11 Error: bare <CR> or <LF>, or NUL, in message data"
# [limits] bare_newline = "normalize" takes bare CR/LF as line endings, never a NUL.
NUL_IN_DATA = "550 5.6.11 Error: NUL in message data"
PREGREET = "521 5.5.1 Protocol error: client talked before the greeting"
CONNECT_FAILED = Verdict.tempfail(421, "4.3.0", "connect", "Internal error, try again later")
BIG = 1 << 20  # bytes: messages larger than this are joined one per turn of the loop
TOO_SLOW = Verdict.tempfail(451, "4.3.0", "timeout",
                            "Took too long to process the message, try again later")


def header_too_large(size: int, limit: int) -> Verdict:
    """A header field over limits.header_size_limit: permanent, the same message would
    be refused again (RFC 3463 5.3.4: a size limit of this system)."""
    return Verdict.reject(552, "5.3.4", "size", "Message header too large",
                          detail=f"a header field of at least {size} bytes, limit {limit}")


class ContentDecision(NamedTuple):
    """What `RelayHandler.check_content` decided of a message."""

    verdict: Verdict | None
    auth_headers: list[tuple[str, str]]  # Authentication-Results etc., to prepend
    notes: list[str]  # each filter's own verdict (filters/base.py Context.notes)


def scan_notes(verdict: Verdict | None) -> str:
    """What the content filters said of an accepted message, for its event's detail."""
    headers = verdict.headers if verdict is not None else ()
    notes = " ".join(f"{name}={value}" for name, value in headers
                     if name in ("X-Spam-Score", "X-Floodgate-Unscanned"))
    return f"{verdict.reason} {notes}".strip() if verdict is not None else notes


class BareNewline(Exception):
    """A command line with a CR or LF outside a CRLF pair: its framing cannot be trusted."""


def queue_full(detail: str) -> Verdict:
    """Back-pressure: the spool is over its limit or the disk nearly full; mail waits."""
    return Verdict.tempfail(452, "4.3.1", "queue_full",
                            "Insufficient system storage, try again later", detail=detail)


def null_sender_share(detail: str) -> Verdict:
    """One client has its share of the spool in null-sender mail queued: the rest waits."""
    return Verdict.tempfail(452, "4.3.1", "null_sender_share",
                            "Insufficient system storage, try again later", detail=detail)


def sender_blocked(match: Match, address: str) -> Verdict:
    """Postfix's check_sender_access / check_helo_access REJECT, as 554 5.7.1."""
    if match.what.startswith("HELO"):
        text = f"<{match.what[5:]}>: Helo command rejected: Access denied"
    elif match.what.startswith("From"):  # a header's domain may be a U-label: say its A-label
        text = f"<{normalise_domain(match.what[12:])}>: From address rejected: Access denied"
    else:
        text = f"<{address}>: Sender address rejected: Access denied"
    # a reply is ASCII (no SMTPUTF8 here); whatever the client wrote is not echoed raw
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return Verdict.reject(554, "5.7.1", "sender_blocked", text, detail=match.detail)


def sender_allowed(match: Match) -> Verdict:
    return Verdict.accept(250, "2.1.0", "sender_allowed", "Ok", detail=match.detail)


def new_session_id() -> str:
    """Twelve random hex digits: enough to tell sessions apart in a day's log."""
    return os.urandom(6).hex()


# Twenty 20 MB messages may end in the same turn of the loop; joining them all at once
# would hold it for 300 ms. A join on the loop holds the GIL as long as one in a thread
# would, without the thread (which made the loop queue for the GIL behind it).
_BIG_JOIN = asyncio.Lock()


class RelaySession(Session):
    """aiosmtpd's session plus what the relay remembers about the client."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: LimitsConfig | None = None):
        super().__init__(loop)
        self.sid = new_session_id()
        self.client = ""
        self.helo = ""
        self.rcpt_attempts = 0
        self.errors = SessionErrors(limits or LimitsConfig())
        # loop.time() by which the reply to the message in hand must be sent
        self.reply_deadline: float | None = None
        self.deferred: Verdict | None = None  # observe mode: DNSBL's refusal, for RCPT
        self.observed: set[str] = set()  # reasons recorded as would-have-refused
        # the transaction's sender (or HELO) is on the sender allow list: DNSBL's deferred
        # refusal, a From-domain block and greylisting do not apply (set at each MAIL)
        self.sender_allowed = False


class FloodgateSMTP(SMTP):
    """One client connection."""

    def __init__(self, handler: RelayHandler, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.relay = handler
        self._greeted = False
        self._collect: list[bytes] | None = None
        # aiosmtpd keeps these in one class-level dict shared by every connection (and adds
        # 26 to MAIL on each EHLO): each connection gets its own, at the RFC's size.
        self.command_size_limit = COMMAND_LIMIT
        self.command_size_limits = collections.defaultdict(lambda: COMMAND_LIMIT)
        self._refusal: Verdict | None = None  # from the connection limits
        self._admitted = False
        self._pregreet = False
        self._talked = asyncio.Event()
        self._close_after_reply = False
        self._processing = False  # a message is being scanned/queued: do not cut it off
        self._session_timer: asyncio.TimerHandle | None = None

    # private override: aiosmtpd has no session factory option; ours carries the client state
    def _create_session(self) -> RelaySession:
        return RelaySession(self.loop, self.relay.limits)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        session = self.session
        assert isinstance(session, RelaySession)
        peer = session.peer
        session.client = peer[0] if isinstance(peer, tuple) else str(peer)
        self.relay.connections.add(self)
        if not self._admitted and self._refusal is None:  # not again after STARTTLS
            self._refusal = self.relay.admit(session)
            self._admitted = self._refusal is None

    # private override: aiosmtpd's command reader takes a bare LF as a line end (smuggling)
    # and runs a pipelined batch without yielding; the only place to wrap its reader
    def _cb_client_connected(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        """Command lines must end in CRLF, with no CR or LF inside: aiosmtpd splits them
        at a bare LF, which a next hop may not.

        A command already in the buffer (pipelining) waits one turn of the event loop:
        aiosmtpd's command loop would otherwise run a whole pipelined batch, thousands of
        commands, without letting any other client in. After the session was cut off
        nothing more is read: the task ends when the connection does."""
        super()._cb_client_connected(reader, writer)
        plain = reader.readuntil
        buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
        overrun = False  # the tail of an over-long line is refused as such anyway

        async def strict(separator: bytes = b"\n") -> bytes:
            nonlocal overrun
            if separator in buffer:
                await asyncio.sleep(0)
            if self.transport is None or self.transport.is_closing():
                await self.loop.create_future()  # cancelled by connection_lost
            try:
                line = await plain(separator)
            except asyncio.LimitOverrunError:
                overrun = True
                raise
            if overrun:
                overrun = False
            elif separator == b"\n" and (not line.endswith(b"\r\n") or b"\r" in line[:-2]):
                raise BareNewline(line[:80])
            return line

        reader.readuntil = strict  # type: ignore[method-assign]

    def data_received(self, data: bytes) -> None:
        if not self._greeted and not self._pregreet:
            self._pregreet = True
            self._talked.set()
        super().data_received(data)

    # private override: aiosmtpd has no hook between connect and its 220 greeting
    async def _handle_client(self) -> None:
        """Connect-time checks run before the greeting: a refused host sees only its 4xx or
        5xx. Then postscreen's pregreet test, then aiosmtpd's command loop."""
        session = self.session
        assert isinstance(session, RelaySession)
        verdict = self._refusal
        if verdict is None:
            try:
                verdict = await self.relay.on_connect(session)
            except Exception:
                log.exception("connect check failed %s", kv(session=session.sid,
                                                            client=session.client))
                verdict = CONNECT_FAILED
        if verdict.action != Action.ACCEPT:
            self._hang_up(verdict.reply)
            return
        limits = self.relay.limits
        if limits.greet_wait and not self._pregreet:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._talked.wait(), limits.greet_wait)
        if self._pregreet:
            drop = limits.pregreet_action == "drop"
            self.relay.record(session, None, Stage.CONNECT, Verdict(
                Action.REJECT if drop else Action.ACCEPT, 521 if drop else 220, "5.5.1",
                "pregreet", "client talked before the greeting"))
            if drop:
                self._hang_up(PREGREET)
                return
        if limits.session_timeout:
            self._session_timer = self.loop.call_later(limits.session_timeout,
                                                       self._session_expired)
        await super()._handle_client()

    def _hang_up(self, reply: str) -> None:
        """The last reply, with the session's reference: it ends the session."""
        self._greeted = True
        session = self.session
        if isinstance(session, RelaySession):
            reply = replies.with_ref(reply, session.sid)
        if self.transport is not None and not self.transport.is_closing():
            # private read: aiosmtpd's push() would count and classify this last reply
            self._writer.write(reply.encode() + b"\r\n")
            self.transport.close()

    # private override: aiosmtpd closes silently on timeout; RFC 5321 3.8 wants a 421
    def _timeout_cb(self) -> None:
        """Idle (or DATA) timeout: say 421 before hanging up, as RFC 5321 3.8 asks."""
        session = self.session
        if isinstance(session, RelaySession) and self.transport is not None:
            self.relay.record(session, self.envelope, "command", Verdict.tempfail(
                421, "4.4.2", "timeout", "timeout exceeded", detail="idle or data timeout"))
            self._hang_up(f"421 4.4.2 {self.hostname} Error: timeout exceeded")
        if self.transport is not None:
            super()._timeout_cb()

    def _session_expired(self) -> None:
        """slowloris: however busy, a session ends after limits.session_timeout; a message
        being scanned still gets its reply first."""
        if self._processing:
            self._close_after_reply = True
            return
        session = self.session
        if isinstance(session, RelaySession) and self.transport is not None:
            self.relay.record(session, self.envelope, "command", Verdict.tempfail(
                421, "4.4.2", "timeout", "session too long", detail="session_timeout"))
            self._hang_up(f"421 4.4.2 {self.hostname} Error: session too long")

    def connection_lost(self, error: Exception | None) -> None:
        self.relay.disconnected(self)
        if self._admitted:
            self._admitted = False
            session = self.session
            if isinstance(session, RelaySession):
                self.relay.limiter.release(session.client)
        if self._session_timer is not None:
            self._session_timer.cancel()
        super().connection_lost(error)

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    def close_with(self, reply: str) -> None:
        """Say `reply` (a 421) and hang up; used at shutdown."""
        self.relay.disconnected(self)
        self._hang_up(reply)

    async def push(self, status: Any, *, ref: bool = False) -> None:
        """`ref`: the reply ends a transaction (DATA's) and carries the session's reference
        (`replies.with_ref`), added after aiosmtpd's own replies are rewritten."""
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
            if ref and isinstance(self.session, RelaySession):
                text = replies.with_ref(text, self.session.sid)
        await self._count_reply(text)
        await super().push(text)
        if self._close_after_reply and self.transport is not None:
            self.transport.close()
        self._check_errors()

    async def _count_reply(self, text: str) -> None:
        """smtpd_error_sleep_time before any reply once past the soft error limit (only
        this session waits), then the reply is counted."""
        session = self.session
        if isinstance(session, RelaySession):
            delay = session.errors.delay
            if delay:
                await asyncio.sleep(delay)
            session.errors.reply(text)

    def _check_errors(self) -> None:
        """At the hard error limit: 421, recorded (`error_limit` or `junk_limit`), hang up."""
        session = self.session
        if not isinstance(session, RelaySession) or self.transport is None:
            return
        reason = session.errors.cut_off()
        if reason is None or self.transport.is_closing():
            return
        errors = session.errors
        self.relay.record(session, self.envelope, "command", Verdict.tempfail(
            421, "4.7.0", reason, "Error: too many errors",
            detail=f"{errors.errors} errors, {errors.junk} junk commands"))
        self._hang_up(f"421 4.7.0 {self.hostname} Error: too many errors")

    def _junk(self) -> None:
        """NOOP, RSET, VRFY, HELP (ETRN is not a command here: 500, an error anyway)."""
        if isinstance(self.session, RelaySession):
            self.session.errors.junk_command()
            self._check_errors()

    async def handle_exception(self, error: Exception) -> str:
        """A bare newline in a command: refuse and hang up. Anything else is our fault:
        451 (aiosmtpd says 500), the transaction is dropped, the session goes on."""
        if isinstance(error, BareNewline):
            self._close_after_reply = True
            self.relay.protocol_refusal(self, BARE_IN_COMMAND, "protocol", "command")
            return BARE_IN_COMMAND
        session = self.session
        if isinstance(session, RelaySession):
            log.error("hook failed %s", kv(session=session.sid, client=session.client,
                                           error=type(error).__name__))
        self._set_rset_state()
        return await super().handle_exception(error)

    async def _greeting_reply(self, method: Callable[[str], Any], arg: str) -> None:
        """Run HELO/EHLO, sending its lines in one write: simple clients misread a
        multi-line reply that arrives in pieces."""
        self._collect = []
        try:
            await method(arg)
        finally:
            lines, self._collect = self._collect, None
        if lines:
            await self._count_reply(lines[-1].decode("utf-8", "replace"))
            # private read: aiosmtpd's push() writes and drains each EHLO line on its own
            self._writer.write(b"".join(lines))
            await self._writer.drain()
            self._check_errors()

    @syntax("EHLO hostname")  # overrides keep aiosmtpd's HELP text
    async def smtp_EHLO(self, arg: str) -> None:
        await self._greeting_reply(super().smtp_EHLO, arg)
        # SIZE lets MAIL grow by 26 (RFC 1870); aiosmtpd adds it again on every EHLO
        self.command_size_limits["MAIL"] = COMMAND_LIMIT + 26

    @syntax("HELO hostname")
    async def smtp_HELO(self, arg: str) -> None:
        await self._greeting_reply(super().smtp_HELO, arg)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str) -> None:
        if not await self._refuse_controls(arg, Stage.MAIL):
            await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str) -> None:
        if not await self._refuse_controls(arg, Stage.RCPT):
            await super().smtp_RCPT(arg)

    async def _refuse_controls(self, arg: str | None, stage: Stage) -> bool:
        """A control character in the MAIL or RCPT argument: 501, before aiosmtpd's
        parser, which keeps NUL, DEL and others inside quotes and turns a TAB into a
        quoted space. Such an address was accepted and then stuck in the queue."""
        session = self.session
        verdict = control_problem(arg or "", sender=stage == Stage.MAIL)
        if verdict is None or not isinstance(session, RelaySession):
            return False
        # the argument as sent, in the event (escaped there, as all client text)
        self.relay.record(session, self.envelope, stage, dataclasses.replace(
            verdict, detail=(arg or "")[:COMMAND_LIMIT]),
            recipient=(arg or "") if stage == Stage.RCPT else "")
        await self.push(verdict.reply, ref=True)
        return True

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:
        await super().smtp_NOOP(arg)
        self._junk()

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        await super().smtp_RSET(arg)
        self._junk()

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        await super().smtp_VRFY(arg)
        self._junk()

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:
        await super().smtp_HELP(arg)
        self._junk()

    # aiosmtpd's smtp_DATA, rewritten whole: it reads line by line into memory, takes a
    # bare LF as a line end, and offers no hook on the data; this one streams (body.py)
    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        session = self.session
        assert isinstance(session, RelaySession)
        if (self.envelope is not None and self.envelope.mail_from is not None
                and not self.envelope.rcpt_tos and session.rcpt_attempts and not arg):
            await self.push(NO_VALID_RCPTS, ref=True)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if self.envelope is None or not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        limits = self.relay.limits
        body = Body(self.relay.spool.tmp, limits.data_memory_per_message,
                    self.relay.data_budget)
        try:  # the body's memory and spill file go on every path out (refusal, hang-up)
            await self._read_and_handle(session, DataScanner(
                limit=self.data_size_limit, bare_newline=limits.bare_newline, body=body))
        finally:
            body.close()

    async def _read_and_handle(self, session: RelaySession, scanner: DataScanner) -> None:
        """The rest of DATA: read to the final dot, refuse or run the DATA hook, reply."""
        assert self.envelope is not None
        limits = self.relay.limits
        # private calls from here on, as aiosmtpd's own smtp_DATA makes them: its timer
        # (one for the whole transfer, none while the message is scanned), its reader, its
        # hook caller and its post-DATA reset
        self._reset_timeout(limits.data_timeout or None)  # the whole transfer, not per line
        try:
            await read_data(self._reader, scanner)
        except Exception:
            # out of step with the client: whatever it sends next cannot be trusted
            self._close_after_reply = True
            raise
        refused = scanner.refused
        if refused is not Problem.NONE:
            scanner.body.close()  # the spill file is gone before the client hears the refusal
            self._reset_timeout()
            if refused in (Problem.BARE, Problem.NUL):
                reply = BARE_IN_DATA if refused is Problem.BARE else NUL_IN_DATA
                self.relay.protocol_refusal(self, reply, "protocol", "data")
                await self.push(reply, ref=True)
            elif refused is Problem.TOO_LONG:
                await self.push("500 Line too long (see RFC5321 4.5.3.1.6)", ref=True)
            else:
                await self.push("552 Error: Too much mail data", ref=True)
            self._set_post_data_state()
            return
        if scanner.body.spilled:  # read back off the loop; the file goes when DATA ends
            content = await asyncio.to_thread(scanner.content)
        elif scanner.size > BIG:  # one big join (~15 ms for 20 MB) per turn of the loop
            async with _BIG_JOIN:
                content = scanner.content()
                await asyncio.sleep(0)
        else:
            content = scanner.content()
        scanner.body.close()
        self.envelope.content = self.envelope.original_content = content
        # from here the reply deadline rules, not the idle timer: never hang up on a
        # message while it is scanned or written to the spool
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        session.reply_deadline = self.loop.time() + limits.reply_timeout
        self._processing = True
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self._processing = False
            session.reply_deadline = None
            self._reset_timeout()
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status, ref=True)

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push("502 5.5.1 AUTH not available on this MX")

    # private override: aiosmtpd's reset of a transaction, the one place to reset ours too
    def _set_rset_state(self) -> None:
        super()._set_rset_state()
        if isinstance(self.session, RelaySession):
            self.session.rcpt_attempts = 0


class Doorman(asyncio.Protocol):
    """The protocol of every new connection until it is let in. A blocked client gets its
    554 here, before aiosmtpd builds a protocol, a stream reader, a session and a task for
    it (about three quarters of what a refused connection used to cost); anyone else is
    handed to a FloodgateSMTP on the same transport."""

    __slots__ = ("_door", "_make")

    def __init__(self, door: Callable[[str], bytes | None], make: Callable[[], SMTP]):
        self._door = door
        self._make = make

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        refusal = self._door(peer[0] if isinstance(peer, tuple) else str(peer))
        if refusal is not None:
            transport.write(refusal)  # type: ignore[attr-defined]
            transport.close()
            return
        inner = self._make()
        transport.set_protocol(inner)
        inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Only a refused connection ends while the doorman still holds it."""


class RelayHandler:
    """aiosmtpd hooks: decide, record, spool."""

    def __init__(self, *, node: str, hostname: str, pipeline: Pipeline, spool: Spool,
                 events: EventWriter, max_recipients: int, ipv6_prefix: int = 64,
                 gate: Callable[[str], BlockState | None] = lambda client: None,
                 protected: Callable[[str], str | None] = lambda client: None,
                 limits: LimitsConfig | None = None, postmaster: str = "",
                 hopcount_limit: int = 50, observe: Observe | None = None,
                 greylist: Greylisting | None = None, senders: SenderLists | None = None):
        """`greylist`: asked for each known recipient (client, sender, recipient): a 451,
        a pass to record, or None. `postmaster`: where <postmaster> and an unknown
        postmaster@<hosted domain> go ("" refuses them like any other address)."""
        self.node = node
        self.hostname = hostname
        self.spool = spool
        self.events = events
        self.ipv6_prefix = ipv6_prefix
        self.gate = gate
        self.protected = protected
        self.greylist: Greylisting = greylist or _no_greylist
        self.senders = senders or SenderLists(None)
        self.limits = limits or LimitsConfig()
        self.limiter = ConnectionLimiter(self.limits, ipv6_prefix)
        # DATA held in memory by all sessions together; past it every message spills
        self.data_budget = Budget(self.limits.data_memory_total)
        self.configure(pipeline=pipeline, max_recipients=max_recipients, limits=self.limits,
                       postmaster=postmaster, hopcount_limit=hopcount_limit,
                       observe=observe or Observe())
        self.connections: set[FloodgateSMTP] = set()
        # Why new mail must wait (spool or disk full), or None; set by the delivery service.
        self.queue_full: Callable[[], str | None] = lambda: None
        # Why this client's null-sender mail must wait (its share is queued), or None.
        self.null_sender_full: Callable[[str], str | None] = lambda client: None
        # Counts each decision (stage, action, reason) for metrics; set by the server.
        self.on_decision: Callable[[str, str, str], None] = lambda *decision: None
        # Sees every event recorded (the running score that blocks at once); set by the server.
        self.on_event: Callable[[EventRecord], None] = lambda event: None
        # [auth] enabled: SPF, DKIM, DMARC and ARC after DATA; set by the server (and reload)
        self.auth: Authenticator | None = None

    def configure(self, *, pipeline: Pipeline, max_recipients: int, limits: LimitsConfig,
                  postmaster: str, hopcount_limit: int, observe: Observe) -> None:
        """What a reload may change. Each command reads these when it runs, so an open
        session's next command sees them; a session keeps the error limits it began with."""
        self.pipeline = pipeline
        self.max_recipients = max_recipients
        self.limits = limits
        self.limiter.configure(limits)
        self.data_budget.total = limits.data_memory_total
        self.postmaster = postmaster
        self.hopcount_limit = hopcount_limit
        self.observe = observe

    @property
    def open_connections(self) -> int:
        """SMTP connections open now (read by the metrics at scrape time)."""
        return len(self.connections)

    # -- recording ---------------------------------------------------------------------

    def record(self, session: RelaySession, envelope: Envelope | None, stage: str,
               verdict: Verdict, *, recipient: str = "", size: int | None = None,
               queue_id: str = "", message_id: str = "", notes: Sequence[str] = ()) -> None:
        """One decision: an event row for the store and a log line for the operator."""
        sender = envelope.mail_from if envelope is not None and envelope.mail_from else ""
        self._record(session.sid, session.client, session.helo, stage, verdict,
                     sender=sender if envelope is not None else None,
                     recipient=recipient, size=size, queue_id=queue_id,
                     message_id=message_id, notes=notes)

    def _record(self, sid: str, client: str, helo: str, stage: str, verdict: Verdict, *,
                sender: str | None = None, recipient: str = "", size: int | None = None,
                queue_id: str = "", message_id: str = "", notes: Sequence[str] = ()) -> None:
        """`sender` None: no transaction yet (the log line then has no sender field).
        `notes`: the filters' own verdicts (filters/base.py Context.notes), after the
        detail in the event (its first word stays what reports group by: the virus name),
        a field of their own in the log line."""
        verdicts = " ".join(notes)
        detail = f"{verdict.detail} {verdicts}" if verdict.detail and verdicts else \
            verdict.detail or verdicts
        # client-chosen text (HELO, addresses, virus names) is stored escaped: no NUL for
        # PostgreSQL to refuse, no terminal escapes for a report to replay. The stage goes
        # as a plain str, not a Stage member: the event writer's pipe takes plain values
        # fastest (relay/events/process.py).
        event = EventRecord(
            ts=EventRecord.now(), node=self.node, client=client,
            host=host_key(client, self.ipv6_prefix), stage=str(stage),
            action=verdict.action.value, reason=verdict.reason, code=verdict.code,
            helo=printable(helo)[:255], sender=printable(sender or "")[:320],
            recipient=printable(recipient), detail=printable(detail), size=size,
            queue_id=queue_id, session=sid, message_id=bounded_message_id(message_id),
        )
        self.events.emit(event)
        self.on_event(event)
        self.on_decision(stage, verdict.action.value, verdict.reason)
        log.info("decision %s", kv(
            session=sid, client=client, stage=stage,
            action=verdict.action.value, reason=verdict.reason, code=verdict.code,
            helo=helo, sender=None if sender is None else f"<{sender}>", rcpt=recipient,
            size=size, queue_id=queue_id, detail=verdict.detail, verdicts=verdicts,
        ))

    def door(self, client: str) -> bytes | None:
        """The connect gate, asked before any SMTP state exists for the connection: the
        554 for a blocked client (recorded: knocking while blocked counts), or None."""
        verdict = self.refused_at_door(client)
        if verdict is None:
            return None
        sid = new_session_id()
        self._record(sid, client, "", Stage.CONNECT, verdict)
        return replies.with_ref(verdict.reply, sid).encode() + b"\r\n"

    def refused_at_door(self, client: str) -> Verdict | None:
        """The gate's refusal said as the client connects, or None (observe mode:
        on_connect or RCPT records it, with the session)."""
        verdict = self.blocked(client)
        if verdict is None or verdict.action == Action.OBSERVE or self.observe.defers:
            return None
        return verdict

    def blocked(self, client: str) -> Verdict | None:
        """The 554 for a client the gate blocks now, or None. Asked at the door and again
        at MAIL and RCPT: a session opened before its host was blocked ends there."""
        block = self.gate(client)
        if block is None:
            return None
        verdict = Verdict.reject(
            554, "5.7.1", "blocked",
            f"Service unavailable; client [{client}] is blocked until "
            f"{block.expires.strftime('%Y-%m-%d %H:%M UTC')}", detail=block.network)
        # a block the scorer made in observe mode only ever records (OBSERVE action)
        return observed(verdict) if block.source == OBSERVE_SOURCE else verdict

    async def on_connect(self, session: RelaySession) -> Verdict:
        """The CONNECT filters (DNSBL) unless protected; the gate was asked at the door."""
        verdict: Verdict | None = None
        notes: list[str] = []
        if not self.protected(session.client):
            ctx = Context(client=session.client, notes=notes)
            verdict = await self.pipeline.run(Stage.CONNECT, ctx)
        if verdict is not None and verdict.reason == "dnsbl" and (self.observe.defers
                                                                  or self.senders.allows):
            # observe mode, or a sender allow list that may lift it: decided at RCPT
            session.deferred, verdict = verdict, None
        if verdict is None or verdict.action == Action.ACCEPT:
            verdict = CONNECTED
        # the DNSBL's answer of a connection let in (a refusal's detail has it already)
        self.record(session, None, Stage.CONNECT, verdict,
                    notes=notes if verdict is CONNECTED else ())
        if verdict is CONNECTED:  # observe mode: what would have been refused here
            for would in (self.blocked(session.client), session.deferred):
                if would is not None and (self.observe.everywhere
                                          or would.action == Action.OBSERVE):
                    self.would_refuse(session, None, Stage.CONNECT, would)
        return verdict

    def would_refuse(self, session: RelaySession, envelope: Envelope | None, stage: str,
                     verdict: Verdict, recipient: str = "") -> None:
        """Observe mode: the refusal recorded as one that would have been made, once per
        session and reason (enforced, the first would have ended the session)."""
        if verdict.reason not in session.observed:
            session.observed.add(verdict.reason)
            self.record(session, envelope, stage, observed(verdict), recipient=recipient)

    def policy_refusal(self, session: RelaySession, envelope: Envelope,
                       address: str) -> Verdict | None:
        """The gate's re-check and a deferred DNSBL refusal at RCPT: said for an enforcing
        domain's recipient, only recorded for an observing one's."""
        refusal = None
        deferred = None if session.sender_allowed else session.deferred
        for would in (self.blocked(session.client), deferred):
            if would is None:
                continue
            if would.action == Action.OBSERVE or self.observe.of(address):
                self.would_refuse(session, envelope, Stage.RCPT, would, address)
            elif refusal is None:
                refusal = would
        return refusal

    def admit(self, session: RelaySession) -> Verdict | None:
        """The connection limits, checked as the TCP connection is made; a refusal is
        recorded here (its 421 is said instead of the greeting)."""
        verdict = self.limiter.admit(session.client)
        if verdict is not None:
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
        verdict = self.blocked(session.client)
        if verdict is not None and (verdict.action == Action.OBSERVE or self.observe.defers):
            verdict = None  # observe mode: RCPT decides, by the recipient's domain
        if verdict is None:
            verdict = queue_full(full) if full is not None else size_problem(address, sender=True)
        if (verdict is None and address.strip() == NULL_SENDER_TEXT
                and not self.limiter.is_exempt(session.client)
                and (over := self.null_sender_full(session.client)) is not None):
            verdict = null_sender_share(over)
        session.sender_allowed = False
        if verdict is None and not self.protected(session.client):
            match = self.senders.envelope(address, session.helo)
            if match is not None and match.list == "block":
                verdict = sender_blocked(match, address)
            elif match is not None:
                session.sender_allowed = True
                self.record(session, None, Stage.MAIL, sender_allowed(match))
        if verdict is not None:
            self.record(session, envelope, Stage.MAIL, verdict)
            return replies.with_ref(verdict.reply, session.sid)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: FloodgateSMTP, session: RelaySession,
                          envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        session.rcpt_attempts += 1
        full = self.queue_full()
        blocked = self.policy_refusal(session, envelope, address)
        if blocked is not None:
            verdict: Verdict | None = blocked
        elif full is not None:
            verdict = queue_full(full)
        elif len(envelope.rcpt_tos) >= self.max_recipients:
            verdict = TOO_MANY_RCPTS
        elif (problem := size_problem(address, sender=False) or routing_problem(address)):
            verdict = problem
        elif self.postmaster and address.lower() == "postmaster":
            verdict = self._postmaster()
        else:
            ctx = Context(client=session.client, helo=session.helo,
                          mail_from=envelope.mail_from or "", rcpt=address,
                          rcpts=envelope.rcpt_tos)
            verdict = await self.pipeline.run(Stage.RCPT, ctx)
            # postmaster is always taken (RFC 5321 4.5.1), verification unable to say or not
            if (verdict is not None and verdict.reason in UNKNOWN_OR_UNVERIFIED
                    and self.postmaster and is_postmaster(address)):
                verdict = self._postmaster()
            if verdict is not None and verdict.reason == "known_rcpt":
                verdict = await self._greylist(session, envelope, address, verdict)
        if verdict is None:  # nothing at RCPT has an opinion: never an open relay
            verdict = Verdict.reject(554, "5.7.1", "relay_denied", "Relay access denied")
        self.record(session, envelope, Stage.RCPT, verdict, recipient=address)
        if verdict.action == Action.ACCEPT:
            envelope.rcpt_tos.append(self.postmaster if verdict.reason == "postmaster"
                                     else address)
            envelope.rcpt_options.extend(rcpt_options)
            return verdict.reply
        return replies.with_ref(verdict.reply, session.sid)

    async def _greylist(self, session: RelaySession, envelope: Envelope, address: str,
                        known: Verdict) -> Verdict:
        """A known recipient, greylisted or not ([greylist]); only a valid recipient is
        greylisted, so the 451 never tells a dictionary attacker which addresses exist.
        A retry that passes is recorded (`greylist_passed`) before the recipient's 250."""
        if session.sender_allowed:
            return known
        grey = await self.greylist(session.client, envelope.mail_from or "", address)
        if grey is None:
            return known
        if grey.action == Action.ACCEPT:
            self.record(session, envelope, Stage.RCPT, grey, recipient=address)
            return known
        return grey

    def _postmaster(self) -> Verdict:
        """RFC 5321 4.5.1: <postmaster> must be accepted, and postmaster at every domain
        the relay takes mail for; both go to the configured postmaster address."""
        return Verdict.accept(250, "2.1.5", "postmaster", "Ok",
                              detail=f"routed to {self.postmaster}")

    async def handle_VRFY(self, server: FloodgateSMTP, session: RelaySession,
                          envelope: Envelope, address: str) -> str:
        return "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"

    async def check_content(self, session: RelaySession, envelope: Envelope,
                            data: bytes) -> ContentDecision:
        """DATA's decisions before anything is queued: the header size limit, the hop
        count, the From-domain block, the content filters and (with [auth] on) SPF, DKIM,
        DMARC and ARC beside them, within the reply deadline. A refusal comes back
        recorded; an accept (its headers to add) or None is for the caller to record with
        what it did with the message, with the authentication headers to prepend and the
        filters' own verdicts (for its event). The relay's DATA hook and the milter
        (relay/smtp/milter.py) both decide here."""
        rcpts = ",".join(envelope.rcpt_tos)
        notes: list[str] = []
        limit = self.limits.header_size_limit
        if (big := await oversized_field_async(data[:head_end(data)], limit)) is not None:
            refused = header_too_large(big, limit)
            self.record(session, envelope, Stage.DATA, refused, recipient=rcpts, size=len(data))
            return ContentDecision(refused, [], notes)
        hops = hop_count(data, self.hopcount_limit + 1)
        if hops > self.hopcount_limit:  # a loop: Postfix's hopcount_limit
            self.record(session, envelope, Stage.DATA, dataclasses.replace(
                TOO_MANY_HOPS, detail=f"over {self.hopcount_limit} Received: lines"),
                recipient=rcpts, size=len(data))
            return ContentDecision(TOO_MANY_HOPS, [], notes)
        if (refused := self._from_blocked(session, data)) is not None:
            self.record(session, envelope, Stage.DATA, refused, recipient=rcpts, size=len(data))
            return ContentDecision(refused, [], notes)
        ctx = Context(client=session.client, helo=session.helo,
                      mail_from=envelope.mail_from or "", rcpts=list(envelope.rcpt_tos),
                      content=data, notes=notes)
        left = (session.reply_deadline - asyncio.get_running_loop().time()
                if session.reply_deadline is not None else None)
        auth = self.auth
        # authentication is DNS: it runs while the content scanners do, not after them
        checking = (asyncio.ensure_future(auth.check(data, session.client, session.helo,
                                                     envelope.mail_from or ""))
                    if auth is not None else None)
        report: AuthReport | None = None
        try:
            async with asyncio.timeout(left):
                verdict = await self.pipeline.run(Stage.DATA, ctx)
                if checking is not None and (verdict is None
                                             or verdict.action == Action.ACCEPT):
                    report = await self._auth_report(session, checking)
        except TimeoutError:
            verdict = TOO_SLOW
        finally:
            if checking is not None and not checking.done():
                checking.cancel()
        if verdict is not None and verdict.action != Action.ACCEPT:
            self.record(session, envelope, Stage.DATA, verdict, recipient=rcpts,
                        size=len(data), notes=notes)
            return ContentDecision(verdict, [], notes)
        if auth is None or report is None:
            return ContentDecision(verdict, [], notes)
        action = auth.action(report, envelope.rcpt_tos)
        observing = action == "reject" and self._observes_dmarc(auth, report, envelope)
        refusal = self._auth_findings(session, envelope, report, action, rcpts, len(data),
                                      observing=observing)
        if refusal is not None:
            return ContentDecision(refusal, [], notes)
        return ContentDecision(verdict, auth.headers(report, "tag" if observing else action),
                               notes)

    async def handle_DATA(self, server: FloodgateSMTP, session: RelaySession,
                          envelope: Envelope) -> str:
        data = envelope.original_content or b""
        rcpts = ",".join(envelope.rcpt_tos)
        verdict, auth_headers, filter_notes = await self.check_content(session, envelope, data)
        if verdict is not None and verdict.action != Action.ACCEPT:
            return verdict.reply
        notes = ""
        pieces: tuple[bytes | memoryview, ...] = (data,)
        auth = self.auth
        if Stage.DATA in self.pipeline.stages or auth is not None:
            # strip forged X-Spam-*/X-Floodgate-* fields even when no filter added any; the
            # body stays where it is (a view), only the header block is rebuilt
            headers = verdict.headers if verdict is not None else ()
            pieces = await rewrite_head_async(data, headers)
            if auth is not None:  # and Authentication-Results claiming our authserv-id
                head, rest = pieces
                pieces = (prepend_headers(auth.strip(bytes(head)), auth_headers), rest)
            notes = scan_notes(verdict)
        queue_id = new_queue_id()
        trace = self.received_header(session, envelope, queue_id)
        spooled = SpoolEnvelope(
            queue_id=queue_id, mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos), client=session.client, helo=session.helo,
            node=self.node, received=time.time(),
            size=len(trace) + sum(len(piece) for piece in pieces),
            mail_options=list(envelope.mail_options),
        )
        try:
            await asyncio.to_thread(self._write, spooled, trace, *pieces)
        except OSError as e:
            log.error("spool write failed %s", kv(queue_id=queue_id, error=e.strerror or e))
            if e.errno in (errno.ENOSPC, errno.EDQUOT):  # disk full: 452, as at MAIL
                failed = queue_full(f"spool write: {e.strerror}")
            else:
                failed = Verdict.tempfail(SPOOL_FAILED.code, SPOOL_FAILED.status, "spool",
                                          SPOOL_FAILED.text, detail=str(e.strerror or e))
            self.record(session, envelope, Stage.DATA, failed, recipient=rcpts, size=len(data))
            return failed.reply
        accepted = Verdict.accept(250, "2.0.0", "accepted", f"Ok: queued as {queue_id}",
                                  detail=notes)
        session.errors.delivered()
        self.record(session, envelope, Stage.DATA, accepted, recipient=rcpts,
                    size=spooled.size, queue_id=queue_id, message_id=message_id_of(data),
                    notes=filter_notes)
        return accepted.reply

    def _from_blocked(self, session: RelaySession, data: bytes) -> Verdict | None:
        """The From header's domain on the sender block list (and not allowed): 554 5.7.1
        at the end of DATA, before any content scan. Not for an allowlisted client or an
        allowed envelope sender (both outrank the blocks)."""
        if (not self.senders.entries or session.sender_allowed
                or self.protected(session.client)):
            return None
        domain = from_domain(data[:head_end(data)])
        match = self.senders.from_domain(domain)
        if match is None or match.list != "block":
            return None
        return sender_blocked(match, domain)

    async def _auth_report(self, session: RelaySession,
                           checking: asyncio.Future[AuthReport]) -> AuthReport | None:
        """The checks' report; a bug in them costs the message its header, not its delivery
        (DNS failures never get here: they are temperror results)."""
        try:
            return await checking
        except Exception:
            log.exception("authentication failed %s", kv(session=session.sid))
            return None

    def _observes_dmarc(self, auth: Authenticator, report: AuthReport,
                        envelope: Envelope) -> bool:
        """Observe mode ([policy]) for a DMARC refusal: no recipient of an enforcing domain
        would have it refused (a message to an enforcing and an observing domain is
        refused, as one to a rejecting and a tagging domain is)."""
        enforcing = [r for r in envelope.rcpt_tos if not self.observe.of(r)]
        return not enforcing or auth.action(report, enforcing) != "reject"

    def _auth_findings(self, session: RelaySession, envelope: Envelope, report: AuthReport,
                       action: str, rcpts: str, size: int, *,
                       observing: bool = False) -> Verdict | None:
        """Each finding (spf_fail, dkim_fail, dmarc_reject, ...) is an event for scoring and
        reports, its detail naming the From domain; the refusal when the action is reject.
        Observing, the refusal is recorded as would-have-refused (action observe), the
        message accepted and tagged."""
        detail = report.summary() + (f" action={action}" if report.findings() else "")
        if observing:
            detail += " (observe mode: tagged)"
        refusal = None
        if action == "reject":
            refusal = Verdict.reject(
                550, "5.7.1", Reason.DMARC_REJECT,
                f"DMARC policy of {_reply_domain(report.dmarc.from_domain)} rejects this "
                "message",
                detail=detail)
        for reason in report.findings():
            if refusal is not None and reason == Reason.DMARC_REJECT:
                continue
            # a finding, not a decision: action accept, so a refused message is counted
            # refused once (by its dmarc_reject) and an accepted one accepted once
            self.record(session, envelope, Stage.DATA,
                        Verdict(Action.ACCEPT, 0, "", reason, "authentication", detail),
                        recipient=rcpts, size=size)
        if refusal is not None and observing:
            self.record(session, envelope, Stage.DATA, observed(refusal), recipient=rcpts,
                        size=size)
            return None
        if refusal is not None:
            self.record(session, envelope, Stage.DATA, refusal, recipient=rcpts, size=size)
        return refusal

    def _write(self, envelope: SpoolEnvelope, trace: bytes, *pieces: bytes | memoryview) -> None:
        """In a worker thread; trace line and message are written without joining them."""
        self.spool.write(envelope, trace, *pieces)

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


def _reply_domain(domain: str) -> str:
    """The sender's From domain as an SMTP reply may carry it: ASCII letters, digits, dots
    and hyphens only (it is the sender's text)."""
    kept = "".join(c for c in domain if c.isascii() and (c.isalnum() or c in ".-"))[:253]
    return kept or "the From domain"


def _clean(text: str) -> str:
    """Keep a client-supplied string from breaking the header it is written into."""
    return "".join(c for c in text if c.isprintable() and c not in "()\\")[:255]
