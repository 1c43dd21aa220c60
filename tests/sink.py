"""A real SMTP server (aiosmtpd on loopback) standing in for a hosted domain's own server.

The test tells it how to answer (`451` for one recipient, `550` for another, or a list of its
users: everyone else gets `550 5.1.1`), holds RCPT replies until released, takes it down
and brings it back on the same port, and reads what arrived. Runs in a thread of the test
process, so assertions see deliveries as they happen.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import threading
from dataclasses import dataclass
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from tests.support import free_port


@dataclass(frozen=True, slots=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool
    mail_arg: str = ""  # the MAIL command's argument as it came over the wire


    def message(self) -> Message:
        return email.message_from_bytes(self.data, policy=email.policy.compat32)

    @property
    def message_id(self) -> str:
        return str(self.message().get("Message-ID", ""))


class SinkHandler:
    def __init__(self, sink: Sink):
        self.sink = sink

    async def handle_EHLO(self, server: Any, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        with self.sink.lock:
            self.sink.sessions.add(id(session))
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        with self.sink.lock:
            self.sink.rcpt_attempts[address] = self.sink.rcpt_attempts.get(address, 0) + 1
            self.sink.probes.append((getattr(session, "mail_arg", ""), address))
            reply = self.sink.replies.get(address)
            users = self.sink.users
        if not self.sink.released.is_set():
            await asyncio.to_thread(self.sink.released.wait)
        if reply is not None:
            return reply
        if users is not None and address.lower() not in users:
            return "550 5.1.1 <" + address + ">: Recipient address rejected: no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        item = Received(str(envelope.mail_from), tuple(envelope.rcpt_tos),
                        bytes(envelope.original_content or b""), session.ssl is not None,
                        getattr(session, "mail_arg", ""))
        with self.sink.lock:
            self.sink.received.append(item)
        return "250 2.0.0 Ok: delivered"


class SinkSMTP(SMTP):
    """Keeps the MAIL argument as sent: aiosmtpd reports an empty reverse path as "<>",
    which cannot tell `MAIL FROM:<>` from a sender that was sent as the text "<>"."""

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str) -> None:
        if self.session is not None:
            self.session.mail_arg = arg  # type: ignore[attr-defined]
        await super().smtp_MAIL(arg)


class SinkController(Controller):
    def factory(self) -> SMTP:
        return SinkSMTP(self.handler, **self.SMTP_kwargs)


class Sink:
    """`replies[address] = "451 4.3.0 later"` makes that RCPT fail until removed."""

    def __init__(self, tls_context: ssl.SSLContext | None = None, port: int | None = None):
        self.port = port or free_port()
        self.tls_context = tls_context
        self.lock = threading.Lock()
        self.replies: dict[str, str] = {}
        self.received: list[Received] = []
        self.rcpt_attempts: dict[str, int] = {}
        # (MAIL argument, RCPT address) of every RCPT, in order
        self.probes: list[tuple[str, str]] = []
        self.users: set[str] | None = None  # None: every address is taken
        self.released = threading.Event()  # cleared: RCPT replies wait (`hold`)
        self.released.set()
        self.sessions: set[int] = set()
        self.controller: Controller | None = None

    @property
    def hop(self) -> str:
        return f"127.0.0.1:{self.port}"

    def up(self) -> Sink:
        kwargs: dict[str, Any] = {}
        if self.tls_context is not None:
            kwargs["tls_context"] = self.tls_context
        self.controller = SinkController(SinkHandler(self), hostname="127.0.0.1", port=self.port,
                                     **kwargs)
        self.controller.start()
        return self

    def down(self) -> None:
        self.released.set()  # a held RCPT must not keep the server's loop from stopping
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def set_reply(self, address: str, reply: str | None) -> None:
        with self.lock:
            if reply is None:
                self.replies.pop(address, None)
            else:
                self.replies[address] = reply

    def hold(self) -> None:
        """RCPT replies wait until `release`."""
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    def rcpts_seen(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.probes)

    def messages(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages() if address in m.rcpt_tos]

    def attempts(self, address: str) -> int:
        with self.lock:
            return self.rcpt_attempts.get(address, 0)
