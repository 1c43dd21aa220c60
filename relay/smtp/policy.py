"""Postfix's SMTPD policy delegation (SMTPD_POLICY_README), answered by the relay's handler.

A Postfix in front of the domains asks `check_policy_service inet:127.0.0.1:10040` at its
client and recipient restrictions; each request (name=value lines, a blank line ends it)
gets `action=...` and a blank line. The answers are the relay's own decisions, made by the
same `RelayHandler` methods the SMTP front end calls (the gate, DNSBL, MAIL and RCPT checks)
and recorded as the same events, so scoring, blocks, reports and `hosts show` see a
client behind Postfix as they see one talking to the relay. Anything the relay would accept
is `DUNNO`: Postfix's own restrictions still run after ours.

Postfix keeps a connection open for many requests, from many SMTP sessions one after the
other; a session is told apart by the client's address and port, a transaction by
`instance`.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import time
from dataclasses import dataclass, field

from aiosmtpd.smtp import Envelope

from filters.base import Action, Stage
from relay.logs import kv
from relay.smtp import replies
from relay.smtp.handler import RelayHandler, RelaySession
from relay.smtp.waiting import Waiting

log = logging.getLogger("floodgate.policy")

# Postfix's own attribute lines are short (its line_length_limit is 2048); a client sending
# longer ones, or more of them than Postfix ever sends (about 30), is not Postfix.
MAX_LINE = 4096
MAX_ATTRIBUTES = 100
REQUEST_TIMEOUT = 10.0  # seconds from a request's first line to its blank line
IDLE_TIMEOUT = 600.0  # between requests (Postfix's smtpd_policy_service_max_idle is 300s)
MAX_CONNECTIONS = 1000  # Postfix opens one per smtpd process
MAX_SESSIONS = 20_000  # SMTP sessions remembered (LRU): a flood cannot grow memory
SESSION_IDLE = 600.0  # a client address and port unseen this long is a new session

DUNNO = "DUNNO"
FAILED = "451 4.3.0 Internal error, try again later"


class PolicyProtocolError(Exception):
    """The client broke the protocol or its bounds: the connection is closed."""


@dataclass
class PolicySession:
    """One SMTP session behind Postfix, as the relay would have it."""

    session: RelaySession
    seen: float
    instance: str = ""
    envelope: Envelope = field(default_factory=Envelope)
    mailed: bool = False  # the transaction's MAIL checks passed (envelope.mail_from set)
    refusal: str | None = None  # the connect-time refusal, said at every request after


class PolicyDecider:
    """Maps a policy request onto the relay's decisions and its reply onto an action."""

    def __init__(self, handler: RelayHandler):
        self.handler = handler
        self.sessions: collections.OrderedDict[tuple[str, str], PolicySession] = (
            collections.OrderedDict())

    async def decide(self, attrs: dict[str, str]) -> str:
        """The action for one request: the relay's refusal (`554 5.7.1 ... [ref ...]`) or
        DUNNO."""
        if attrs.get("request") != "smtpd_access_policy":
            return DUNNO
        client = attrs.get("client_address", "")
        if not client:
            return DUNNO
        try:
            ipaddress.ip_address(client)
        except ValueError:  # Postfix always sends one: a made-up host is never recorded
            log.warning("policy request ignored %s",
                        kv(client=client, reason="client_address is not an IP address"))
            return DUNNO
        state = attrs.get("protocol_state", "").upper()
        ps, new = self._session(client, attrs.get("client_port", ""), attrs)
        if new:
            ps.refusal = await self._connect(ps.session)
        if ps.refusal is not None:
            return ps.refusal
        instance = attrs.get("instance", "")
        if instance != ps.instance:  # a new transaction
            ps.instance, ps.envelope, ps.mailed = instance, Envelope(), False
            ps.session.rcpt_attempts = 0
        if state in ("MAIL", "RCPT") and not ps.mailed:  # the transaction's MAIL checks
            reply = await self.handler.handle_MAIL(
                None, ps.session, ps.envelope,  # type: ignore[arg-type]
                attrs.get("sender", "") or "<>", [])
            if not reply.startswith("2"):
                return reply  # and asked again at the transaction's next request
            ps.mailed = True
        if state == "RCPT" and (rcpt := attrs.get("recipient", "")):
            ps.session.rcpt_attempts += 1
            reply = await self.handler.handle_RCPT(
                None, ps.session, ps.envelope, rcpt, [])  # type: ignore[arg-type]
            if not reply.startswith("2"):
                return reply
        return DUNNO

    def _session(self, client: str, port: str,
                 attrs: dict[str, str]) -> tuple[PolicySession, bool]:
        now = time.monotonic()
        key = (client, port)
        ps = self.sessions.get(key)
        new = ps is None or now - ps.seen > SESSION_IDLE
        if ps is None or new:
            session = RelaySession(asyncio.get_running_loop(), self.handler.limits)
            session.client = client
            ps = PolicySession(session, now)
            self.sessions[key] = ps
            if len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)
        self.sessions.move_to_end(key)
        ps.seen = now
        helo = attrs.get("helo_name", "")
        if helo:
            ps.session.helo = ps.session.host_name = helo
        return ps, new

    async def _connect(self, session: RelaySession) -> str | None:
        """What the relay does as a client connects: the gate, the connection limits,
        then the DNSBL."""
        handler = self.handler
        blocked = handler.refused_at_door(session.client)
        if blocked is not None:  # recorded, as at the relay's door: knocking counts
            handler.record(session, None, Stage.CONNECT, blocked)
            return replies.with_ref(blocked.reply, session.sid)
        limited = handler.admit(session)  # recorded there
        if limited is not None:
            return replies.with_ref(limited.reply, session.sid)
        # the connection rate and the global cap count here; how many sessions a client
        # has open at once is Postfix's anvil's to count (smtpd_client_connection_count_limit):
        # no policy request says that a session ended
        handler.limiter.release(session.client)
        verdict = await handler.on_connect(session)
        if verdict.action != Action.ACCEPT:
            return replies.with_ref(verdict.reply, session.sid)
        return None


async def read_request(reader: asyncio.StreamReader) -> dict[str, str] | None:
    """One request's attributes; None at a clean end of the connection."""
    attrs: dict[str, str] = {}
    deadline: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        timeout = IDLE_TIMEOUT if deadline is None else max(0.0, deadline - loop.time())
        try:
            async with asyncio.timeout(timeout):
                line = await reader.readline()
        except TimeoutError:
            if deadline is None:
                raise PolicyProtocolError("idle timeout") from None
            raise PolicyProtocolError(f"request not finished in {REQUEST_TIMEOUT:g}s") from None
        except ValueError:  # asyncio's LimitOverrunError, as readline reports it
            raise PolicyProtocolError(f"attribute line over {MAX_LINE} bytes") from None
        if not line:
            if attrs or deadline is not None:
                raise PolicyProtocolError("connection closed inside a request")
            return None
        if not line.endswith(b"\n"):
            raise PolicyProtocolError("connection closed inside an attribute line")
        if deadline is None:
            deadline = loop.time() + REQUEST_TIMEOUT
        text = line.rstrip(b"\r\n").decode("utf-8", "replace")
        if not text:
            return attrs
        name, eq, value = text.partition("=")
        if not eq or not name:
            raise PolicyProtocolError("an attribute line without name=value")
        if len(attrs) >= MAX_ATTRIBUTES and name not in attrs:
            raise PolicyProtocolError(f"more than {MAX_ATTRIBUTES} attributes")
        attrs[name] = value


class PolicyServer:
    """Serves the protocol on any number of connections, each with many requests; at the
    connection cap a new connection closes the one waiting longest (relay/smtp/waiting.py)."""

    def __init__(self, decider: PolicyDecider):
        self.decider = decider
        self.connections = 0
        self.waiting = Waiting("policy", MAX_CONNECTIONS, log)

    async def __call__(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self.connections += 1
        try:
            if self.connections > MAX_CONNECTIONS and not self.waiting.evict_oldest():
                log.warning("policy connection refused %s",
                            kv(peer=peer, reason=f"over {MAX_CONNECTIONS} connections"))
                return
            await self._serve(reader, writer, peer)
        finally:
            self.waiting.done(writer)
            self.connections -= 1
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: object) -> None:
        while True:
            self.waiting.wait(writer, peer)
            try:
                attrs = await read_request(reader)
            except PolicyProtocolError as e:
                if self.waiting.done(writer):  # else closed for a new one, and said so
                    log.warning("policy connection closed %s", kv(peer=peer, reason=str(e)))
                return
            except ConnectionError:
                return
            if not self.waiting.done(writer) or attrs is None:
                return
            try:
                action = await self.decider.decide(attrs)
            except Exception:
                log.exception("policy decision failed %s",
                              kv(client=attrs.get("client_address")))
                action = FAILED
            writer.write(f"action={action}\n\n".encode("utf-8", "replace"))
            try:
                await writer.drain()
            except ConnectionError:
                return
