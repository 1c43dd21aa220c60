"""The SMTP client of delivery: open a connection to a hop (the first host that answers,
STARTTLS per policy), run one transaction per unit, and carry a destination's units over one
reused connection, turning every reply or failure into a Result for each recipient."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

import aiosmtplib

from relay.config.delivery import DeliveryConfig
from relay.delivery.routing import HopError
from relay.delivery.spool import BOUNCED, DELIVERED, PENDING, Spool
from relay.delivery.work import Destination, Result, Unit
from relay.logs import kv

log = logging.getLogger("floodgate.delivery")


def _reply(e: aiosmtplib.SMTPResponseException) -> str:
    return f"{e.code} {' '.join(e.message.split())}"


def _outcome(reply: str, code: int, hop: str) -> Result:
    if 200 <= code < 300:
        return Result(DELIVERED, reply, hop)
    return Result(BOUNCED if code >= 500 else PENDING, reply, hop)


def tls_context(verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class NextHopClient:
    """Connections and transactions; `hosts` names the hosts to try for a hop (routing)."""

    def __init__(self, settings: DeliveryConfig, hostname: str,
                 hosts: Callable[[str], Awaitable[list[tuple[str, int]]]]):
        self.settings = settings
        self.hostname = hostname
        self.hosts = hosts
        self.tls = tls_context(settings.tls_verify)

    async def open(self, hop: str) -> tuple[aiosmtplib.SMTP, str]:
        """Connect to the first host of the hop that answers, EHLO, STARTTLS per policy.
        Opportunistic TLS that fails in the handshake is retried in plain text (RFC 7435)."""
        last = "451 4.4.1 no host to connect to"
        for host, port in await self.hosts(hop):
            name = f"{host}:{port}"
            tries = [True, False] if self.settings.tls == "opportunistic" else \
                [self.settings.tls == "required"]
            for use_tls in tries:
                client = aiosmtplib.SMTP(hostname=host, port=port, local_hostname=self.hostname,
                                         timeout=self.settings.command_timeout, start_tls=False,
                                         validate_certs=self.settings.tls_verify)
                stage = "connect to"
                try:
                    await client.connect(timeout=self.settings.connect_timeout)
                    await self._hello(client)
                    if use_tls and client.supports_extension("starttls"):
                        stage = "STARTTLS with"
                        await client.starttls(tls_context=self.tls, server_hostname=host)
                        await self._hello(client)
                    elif self.settings.tls == "required":
                        client.close()
                        last = f"451 4.7.4 TLS is required, but was not offered by {name}"
                        break
                    return client, name
                except aiosmtplib.SMTPResponseException as e:
                    last = f"{_reply(e)} (from {name})"
                except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as e:
                    last = f"451 4.4.1 {stage} {name}: {e or type(e).__name__}"
                client.close()
                if stage != "STARTTLS with":
                    break  # only a failed handshake is worth a plain-text retry
        raise HopError(last)

    async def _hello(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            await client.helo()

    async def transaction(self, client: aiosmtplib.SMTP, hop: str, unit: Unit,
                          message: bytes, results: dict[str, Result]) -> None:
        """One message to one destination; fills `results` as replies arrive, so a broken
        connection leaves the already-answered recipients answered."""
        envelope = unit.entry.envelope
        options = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(message)}")
        if "BODY=8BITMIME" in (o.upper() for o in envelope.mail_options) \
                and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        try:
            await client.mail(envelope.mail_from, options=options)
        except aiosmtplib.SMTPResponseException as e:
            for rcpt in unit.recipients:
                results[rcpt] = _outcome(_reply(e), e.code, hop)
            await client.rset()
            return
        accepted = []
        for rcpt in unit.recipients:
            try:
                await client.rcpt(rcpt)
                accepted.append(rcpt)
            except aiosmtplib.SMTPResponseException as e:
                results[rcpt] = _outcome(_reply(e), e.code, hop)
        if not accepted:
            await client.rset()
            return
        try:
            response = await client.data(message)
            reply, code = f"{response.code} {' '.join(response.message.split())}", response.code
        except aiosmtplib.SMTPResponseException as e:
            reply, code = _reply(e), e.code
        for rcpt in accepted:
            results[rcpt] = _outcome(reply, code, hop)

    async def quit(self, client: aiosmtplib.SMTP) -> None:
        try:
            await asyncio.wait_for(client.quit(), 5)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()


class Connection:
    """One destination's connection, reused across its units: opened when first needed,
    reopened after a loss, closed after messages_per_connection. A hop that cannot be
    reached is marked dead for min_backoff, so its other units wait instead of each trying."""

    def __init__(self, client: NextHopClient, dest: Destination, spool: Spool):
        self.client = client
        self.dest = dest
        self.spool = spool
        self.settings = client.settings
        self.smtp: aiosmtplib.SMTP | None = None
        self.name = dest.hop
        self.sent = 0

    async def deliver(self, unit: Unit, held: bool) -> dict[str, Result]:
        """The recipients' results for one unit; none when the message is held or gone."""
        dest = self.dest
        queue_id = unit.entry.envelope.queue_id
        results: dict[str, Result] = {}
        try:
            if held:  # held since dispatch: no attempt, no verdict
                raise FileNotFoundError
            if dest.dead_until > time.time():
                raise HopError(dest.dead_reason)
            _, message = await asyncio.to_thread(self.spool.read, queue_id)
            if self.smtp is None or not self.smtp.is_connected:
                try:
                    self.smtp, self.name = await self.client.open(dest.hop)
                    self.sent = 0
                except HopError as e:
                    if not e.permanent:
                        dest.dead_until = time.time() + self.settings.min_backoff
                        dest.dead_reason = e.reply
                    raise
            await self.client.transaction(self.smtp, self.name, unit, message, results)
            self.sent += 1
        except FileNotFoundError:
            pass  # deleted or held by the operator: the scheduler's finalize sees to it
        except HopError as e:
            status = BOUNCED if e.permanent else PENDING
            for rcpt in unit.recipients:
                results.setdefault(rcpt, Result(status, e.reply, dest.hop))
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as e:
            reply = f"451 4.4.2 lost connection with {self.name}: {e or type(e).__name__}"
            for rcpt in unit.recipients:
                results.setdefault(rcpt, Result(PENDING, reply, self.name))
            if self.smtp is not None:
                self.smtp.close()
            self.smtp = None
        except Exception:  # a bug must not strand the message: retry it later
            log.exception("delivery error %s", kv(queue_id=queue_id, hop=dest.hop))
            for rcpt in unit.recipients:
                results.setdefault(rcpt, Result(PENDING, "451 4.3.0 internal error",
                                                dest.hop))
            if self.smtp is not None:
                self.smtp.close()
            self.smtp = None
        if self.smtp is not None and (self.sent >= self.settings.messages_per_connection
                                      or not self.smtp.is_connected):
            await self.client.quit(self.smtp)
            self.smtp = None
        return results

    async def close(self) -> None:
        if self.smtp is not None:
            await self.client.quit(self.smtp)
            self.smtp = None
