"""A milter (Sendmail/Postfix milter protocol, version 6) for content, decided by the relay.

Postfix's `smtpd_milters = inet:127.0.0.1:10041` hands each message here; at the end of the
body the relay's own DATA decisions run (`RelayHandler.check_content`: the header limit, the
hop count, ClamAV and SpamAssassin with the verdict cache) and are recorded as the relay's
events. A refusal goes back as SMFIR_REPLYCODE with the relay's own reply text, a scanner
failure as its 4xx, an accepted message gets the relay's X-Spam-* headers (forged ones
deleted first) and, with [auth] on, its Authentication-Results inserted at the top (the
sender's Authentication-Results and ARC-Authentication-Results naming our authserv-id
deleted first). No maintained pure-Python milter library exists (pymilter needs libmilter,
purepythonmilter is at 0.0.1), so this is a small implementation with strict bounds: a
packet over MAX_PACKET or a protocol error closes the connection, which Postfix's
`milter_default_action = tempfail` turns into a 451: nothing passes unscanned.

Packets: a 4-byte length (network order, the command byte included), a command byte, data.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import ClassVar

from aiosmtpd.smtp import Envelope

from filters.base import Action, Stage, Verdict
from filters.headers import STRIP_PREFIXES, format_header
from relay.auth.header import claims_ours
from relay.logs import kv
from relay.smtp import replies
from relay.smtp.handler import RelayHandler, RelaySession, scan_notes
from relay.smtp.message_id import message_id_of
from relay.smtp.waiting import Waiting

log = logging.getLogger("floodgate.milter")

VERSION = 6
# Postfix sends body chunks of at most 64 KiB and a header field of at most its
# header_size_limit (100 KiB): anything bigger is not Postfix.
MAX_PACKET = 256 * 1024
IDLE_TIMEOUT = 3600.0  # between packets; Postfix's own milter timeouts are far shorter
MAX_CONNECTIONS = 1000

# commands (SMFIC_*)
ABORT, BODY, CONNECT, MACRO, BODYEOB, HELO = b"A", b"B", b"C", b"D", b"E", b"H"
QUIT_NC, HEADER, MAIL, EOH, OPTNEG, QUIT = b"K", b"L", b"M", b"N", b"O", b"Q"
RCPT, DATA, UNKNOWN = b"R", b"T", b"U"
# replies (SMFIR_*)
ADDHEADER, CHGHEADER, ACCEPT, CONTINUE, REPLYCODE = b"h", b"m", b"a", b"c", b"y"
INSHEADER = b"i"  # SMFIR_INSHEADER: a field at an index, 0 the top (allowed by ADDHDRS)
# actions asked for at negotiation (SMFIF_*): add and change (delete) header fields
SMFIF_ADDHDRS, SMFIF_CHGHDRS = 0x01, 0x10

TOO_BIG_TEXT = replies.SIZE_TEXT


class MilterProtocolError(Exception):
    """The MTA broke the protocol or its bounds: the connection is closed."""


def packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + command + data


def _strings(data: bytes) -> list[bytes]:
    """The NUL-terminated strings of a packet's data (a missing last NUL is tolerated)."""
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return parts


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


async def read_packet(reader: asyncio.StreamReader,
                      timeout: float = IDLE_TIMEOUT) -> tuple[bytes, bytes] | None:
    """(command, data), or None at a clean end of the connection."""
    try:
        async with asyncio.timeout(timeout):
            head = await reader.readexactly(4)
            (length,) = struct.unpack("!I", head)
            if length < 1 or length > MAX_PACKET:
                raise MilterProtocolError(f"packet length {length} (1 to {MAX_PACKET})")
            body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as e:
        if not e.partial and e.expected == 4:
            return None
        raise MilterProtocolError("connection closed inside a packet") from None
    except TimeoutError:
        raise MilterProtocolError("idle timeout") from None
    return body[:1], body[1:]


class MilterSession:
    """One MTA connection: the SMTP sessions it carries, one after the other, and the
    message in hand. `handle` takes a packet and gives the reply packets (none for
    MACRO and ABORT, as the protocol says)."""

    def __init__(self, handler: RelayHandler, max_size: int):
        self.handler = handler
        self.max_size = max_size
        self.macros: dict[str, str] = {}
        self.closed = False
        self._new_session()

    def _new_session(self) -> None:
        self.session = RelaySession(asyncio.get_running_loop(), self.handler.limits)
        self._new_message()

    def _new_message(self) -> None:
        self.envelope = Envelope()
        self.head: list[bytes] = []
        self.forged: list[tuple[str, int]] = []  # (name, index among fields of that name)
        self.counts: dict[str, int] = {}
        self.body = bytearray()
        self.size = 0

    async def handle(self, command: bytes, data: bytes) -> list[bytes]:
        step = self._steps.get(command)
        if command == BODYEOB:
            if data:
                self._body(data)
            return await self._end_of_message()
        if step is None:
            raise MilterProtocolError(f"unknown command {command!r}")
        return step(self, data)

    def _optneg(self, data: bytes) -> list[bytes]:
        if len(data) < 12:
            raise MilterProtocolError("short option negotiation")
        version, actions, _protocol = struct.unpack("!III", data[:12])
        if version < 2:
            raise MilterProtocolError(f"milter protocol version {version}")
        wanted = SMFIF_ADDHDRS | SMFIF_CHGHDRS
        if actions & wanted != wanted:
            raise MilterProtocolError("the MTA does not allow adding and changing headers")
        # every step, every reply: the simplest contract, and the one Postfix defaults to
        return [packet(OPTNEG, struct.pack("!III", min(version, VERSION), wanted, 0))]

    def _macro(self, data: bytes) -> list[bytes]:
        parts = _strings(data[1:])
        for name, value in zip(parts[::2], parts[1::2], strict=False):
            key = _text(name).strip("{}")
            if len(self.macros) < 64 or key in self.macros:  # Postfix sends about 20
                self.macros[key] = _text(value)[:1024]
        return []

    def _connect(self, data: bytes) -> list[bytes]:
        self._new_session()
        parts = data.split(b"\0", 1)
        rest = parts[1] if len(parts) > 1 else b""
        family = rest[:1]
        address = _strings(rest[3:])[0] if family in (b"4", b"6") and len(rest) > 3 else b""
        self.session.client = _text(address) or self.macros.get("client_addr", "") or "unknown"
        return [packet(CONTINUE)]

    def _helo(self, data: bytes) -> list[bytes]:
        helo = _text((_strings(data) or [b""])[0])[:255]
        self.session.helo = self.session.host_name = helo
        return [packet(CONTINUE)]

    def _mail(self, data: bytes) -> list[bytes]:
        self._new_message()
        sender = _text((_strings(data) or [b""])[0])
        self.envelope.mail_from = sender.strip().removeprefix("<").removesuffix(">")[:320]
        return [packet(CONTINUE)]

    def _rcpt(self, data: bytes) -> list[bytes]:
        rcpt = _text((_strings(data) or [b""])[0])
        if len(self.envelope.rcpt_tos) < 1000:  # at most 1000 of 320 characters, as the sender
            self.envelope.rcpt_tos.append(
                rcpt.strip().removeprefix("<").removesuffix(">")[:320])
        return [packet(CONTINUE)]

    def _header(self, data: bytes) -> list[bytes]:
        parts = data.split(b"\0")
        name = parts[0]
        value = parts[1] if len(parts) > 1 else b""
        field = name + b": " + value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
        self._count(len(field))
        if self.size > self.max_size:  # refused at the end: nothing more is kept for it
            return [packet(CONTINUE)]
        self.head.append(field)
        key = _text(name).lower()
        self.counts[key] = self.counts.get(key, 0) + 1
        auth = self.handler.auth
        # an Authentication-Results a sender forged under our id must not reach the mailbox
        if key.startswith(STRIP_PREFIXES) or (
                auth is not None and claims_ours(name, value, auth.authserv_id)):
            self.forged.append((_text(name), self.counts[key]))
        return [packet(CONTINUE)]

    def _continue(self, data: bytes) -> list[bytes]:
        return [packet(CONTINUE)]

    def _body_step(self, data: bytes) -> list[bytes]:
        self._body(data)
        return [packet(CONTINUE)]

    def _body(self, data: bytes) -> None:
        self._count(len(data))
        if self.size <= self.max_size:
            self.body += data

    def _count(self, n: int) -> None:
        self.size += n
        if self.size > self.max_size:  # over: what came so far is dropped, the size kept
            self.head, self.body = [], bytearray()
            self.counts, self.forged = {}, []

    def _abort(self, data: bytes) -> list[bytes]:
        self._new_message()
        return []

    def _quit_nc(self, data: bytes) -> list[bytes]:
        self._new_session()
        return []

    def _quit(self, data: bytes) -> list[bytes]:
        self.closed = True
        return []

    async def _end_of_message(self) -> list[bytes]:
        handler, session, envelope = self.handler, self.session, self.envelope
        queue_id = self.macros.get("i", "")
        rcpts = ",".join(envelope.rcpt_tos)
        notes: list[str] = []
        auth_headers: list[tuple[str, str]] = []
        if self.size > self.max_size:
            verdict: Verdict | None = Verdict.reject(
                552, "5.3.4", "size", TOO_BIG_TEXT,
                detail=f"{self.size} bytes, limit {self.max_size}")
            assert verdict is not None
            handler.record(session, envelope, Stage.DATA, verdict, recipient=rcpts,
                           size=self.size, queue_id=queue_id)
        else:
            data = b"".join(self.head) + b"\r\n" + bytes(self.body)
            envelope.original_content = data
            loop = asyncio.get_running_loop()
            session.reply_deadline = loop.time() + handler.limits.reply_timeout
            try:
                decision = await handler.check_content(session, envelope, data)
                verdict, auth_headers, notes = decision
            finally:
                session.reply_deadline = None
        out: list[bytes]
        if verdict is not None and verdict.action != Action.ACCEPT:
            reply = replies.with_ref(verdict.reply, session.sid)
            out = [packet(REPLYCODE, reply.encode("utf-8", "replace") + b"\0")]
        else:
            out = [packet(CHGHEADER, struct.pack("!I", index) + name.encode() + b"\0\0")
                   for name, index in reversed(self.forged)]
            if Stage.DATA in handler.pipeline.stages and verdict is not None:
                out += [packet(ADDHEADER, name.encode() + b"\0" + _folded(name, value) + b"\0")
                        for name, value in verdict.headers]
            # ours at the top, in order: inserted at index 0 last first
            out += [packet(INSHEADER, struct.pack("!I", 0) + name.encode() + b"\0"
                           + _folded(name, value) + b"\0")
                    for name, value in reversed(auth_headers)]
            handler.record(session, envelope, Stage.DATA, Verdict.accept(
                250, "2.0.0", "accepted", f"Ok: queued as {queue_id}",
                detail=scan_notes(verdict)), recipient=rcpts, size=self.size,
                queue_id=queue_id, message_id=message_id_of(envelope.original_content or b""),
                notes=notes)
            out.append(packet(ACCEPT))
        self._new_message()
        return out

    _steps: ClassVar[dict[bytes, Callable[[MilterSession, bytes], list[bytes]]]] = {
        OPTNEG: _optneg, MACRO: _macro, CONNECT: _connect, HELO: _helo, MAIL: _mail,
        RCPT: _rcpt, HEADER: _header, EOH: _continue, BODY: _body_step, DATA: _continue,
        UNKNOWN: _continue, ABORT: _abort, QUIT_NC: _quit_nc, QUIT: _quit,
    }


def _folded(name: str, value: str) -> bytes:
    """The value as the relay writes it (folded near 76 columns), in the milter's form:
    LF line ends, no space after the colon (Postfix adds one)."""
    field = format_header(name, value, b"\n")
    return field[len(name) + 1:].removeprefix(b" ").removesuffix(b"\n")


class MilterServer:
    """Serves the protocol on any number of MTA connections; at the connection cap a new
    connection closes the one waiting longest for a packet (relay/smtp/waiting.py)."""

    def __init__(self, handler: RelayHandler, max_size: int):
        self.handler = handler
        self.max_size = max_size
        self.connections = 0
        self.waiting = Waiting("milter", MAX_CONNECTIONS, log)

    async def __call__(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or "local"
        self.connections += 1
        try:
            if self.connections > MAX_CONNECTIONS and not self.waiting.evict_oldest():
                log.warning("milter connection refused %s",
                            kv(peer=peer, reason=f"over {MAX_CONNECTIONS} connections"))
                return
            await serve_milter(MilterSession(self.handler, self.max_size), reader, writer,
                               peer, self.waiting)
        finally:
            self.waiting.done(writer)
            self.connections -= 1
            writer.close()


async def serve_milter(milter: MilterSession, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, peer: object = "",
                       waiting: Waiting | None = None) -> None:
    """Packets in, replies out, until QUIT, the end of the connection or a protocol error
    (logged; the MTA then applies its milter_default_action)."""
    while not milter.closed:
        if waiting is not None:
            waiting.wait(writer, peer)
        try:
            got = await read_packet(reader)
        except MilterProtocolError as e:
            if waiting is None or waiting.done(writer):  # else closed for a new one, said so
                log.warning("milter connection closed %s", kv(peer=peer, reason=str(e)))
            return
        except ConnectionError:
            return
        if (waiting is not None and not waiting.done(writer)) or got is None:
            return
        try:
            out = await milter.handle(*got)
        except MilterProtocolError as e:
            log.warning("milter connection closed %s", kv(peer=peer, reason=str(e)))
            return
        except Exception:  # ours: closing makes the MTA apply its default action
            log.exception("milter failed %s", kv(peer=peer, client=milter.session.client))
            return
        if out:
            writer.write(b"".join(out))
            try:
                await writer.drain()
            except ConnectionError:
                return
