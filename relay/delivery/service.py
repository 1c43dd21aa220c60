"""Delivery: carry spooled mail to each domain's next hop, one recipient's fate at a time.

The spool is the queue. A scheduler keeps every message in memory (envelope and progress),
hands due messages to per-destination connection tasks, and writes progress to the state
file after each attempt. A recipient is done after a 250 (delivered) or a 5xx / expired
lifetime (bounced, after its DSN is safely spooled); the message file is removed only when
no recipient is pending, so a crash can repeat a delivery but never skip one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import os
import ssl
import time
from dataclasses import dataclass, field

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver

from blocklist.hosts import host_key
from filters.address import normalise_domain
from relay.config import Config, DomainConfig
from relay.config.types import parse_endpoint
from relay.delivery import dsn, queue_admin
from relay.delivery.spool import (
    BOUNCED,
    DELIVERED,
    PENDING,
    Envelope,
    IncompleteEnvelope,
    MessageState,
    Spool,
)
from relay.events.writer import EventRecord, EventWriter
from relay.logs import kv

log = logging.getLogger("floodgate.delivery")

DISK_CHECK_INTERVAL = 1.0
FLUSH_CHECK_INTERVAL = 0.5


@dataclass(frozen=True, slots=True)
class Result:
    status: str  # DELIVERED, PENDING (deferred) or BOUNCED
    reply: str
    hop: str = ""


class HopError(Exception):
    """No usable connection to a destination; `permanent` bounces instead of deferring."""

    def __init__(self, reply: str, permanent: bool = False):
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent


@dataclass(slots=True)
class Entry:
    envelope: Envelope
    state: MessageState
    inflight: int = 0
    due: float = 0.0
    finalizing: bool = False
    failures: list[dsn.Failure] = field(default_factory=list)


@dataclass(slots=True)
class Unit:
    """The recipients of one message that go to one destination."""

    entry: Entry
    recipients: list[str]


@dataclass(slots=True)
class Destination:
    hop: str  # "host:port" or "mx:domain"
    pending: collections.deque[Unit] = field(default_factory=collections.deque)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    dead_until: float = 0.0
    dead_reason: str = ""


def _reply(e: aiosmtplib.SMTPResponseException) -> str:
    return f"{e.code} {' '.join(e.message.split())}"


def _outcome(reply: str, code: int, hop: str) -> Result:
    if 200 <= code < 300:
        return Result(DELIVERED, reply, hop)
    return Result(BOUNCED if code >= 500 else PENDING, reply, hop)


class DeliveryService:
    """The scheduler and its connection tasks, plus the spool's size for back-pressure."""

    def __init__(self, config: Config, spool: Spool, events: EventWriter):
        self.config = config
        self.settings = config.delivery
        self.hosted: dict[str, DomainConfig] = config.hosted()
        self.hostname = config.relay.hostname
        self.node = config.relay.node
        self.spool = spool
        self.events = events
        self.entries: dict[str, Entry] = {}
        self.held: set[str] = set()
        self.destinations: dict[str, Destination] = {}
        self.heap: list[tuple[float, int, str]] = []
        self.seq = itertools.count()
        self.wake = asyncio.Event()
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._disk_checked = 0.0
        self._flush_checked = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self._disk_low: str | None = None
        self.tls = self._tls_context()
        # Null-sender messages in the spool per client host key (not our own DSNs).
        self.null_queued: collections.Counter[str] = collections.Counter()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load the spool (what a crash or restart left), then run the scheduler."""
        self.loop = asyncio.get_running_loop()
        loaded = await asyncio.to_thread(self._read_all, set())
        for envelope, state in loaded:
            self._add(envelope, state)
        await asyncio.to_thread(self._drop_orphan_states)
        self.held = await asyncio.to_thread(self.spool.held)
        self.spool.listeners.append(self._spooled)
        self.task = asyncio.create_task(self._run(), name="delivery")
        log.info("delivery started %s", kv(queued=len(self.entries), held=len(self.held),
                                           enabled=self.settings.enabled))

    async def stop(self, grace: float) -> None:
        """Let attempts in flight finish within `grace`; anything cut off is retried later."""
        self.stopping = True
        self.wake.set()
        if self._spooled in self.spool.listeners:
            self.spool.listeners.remove(self._spooled)
        tasks = [t for d in self.destinations.values() for t in d.tasks]
        if self.task is not None:
            tasks.append(self.task)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # -- back-pressure -------------------------------------------------------------------

    def queue_full(self) -> str | None:
        """Why new mail must wait (spool too big, disk too full), or None."""
        limit = self.settings.max_spool_messages
        if limit and len(self.entries) >= limit:
            return f"spool holds {len(self.entries)} messages (limit {limit})"
        now = time.monotonic()
        if now - self._disk_checked >= DISK_CHECK_INTERVAL:
            self._disk_checked = now
            self._disk_low = None
            try:
                st = os.statvfs(self.spool.root)
                free = st.f_bavail * st.f_frsize
                if free < self.settings.min_free_disk:
                    self._disk_low = f"{free} bytes free (minimum {self.settings.min_free_disk})"
            except OSError as e:
                self._disk_low = f"cannot check free space: {e.strerror}"
        return self._disk_low

    def null_sender_full(self, client: str) -> str | None:
        """Why `client` may not queue another null-sender message, or None: it has its
        share (limits.null_sender_share of max_spool_messages) queued already."""
        share, limit = self.config.limits.null_sender_share, self.settings.max_spool_messages
        if not share or not limit:
            return None
        cap = max(1, round(share * limit))
        key = host_key(client, self.config.store.ipv6_prefix)
        queued = self.null_queued.get(key, 0)
        if queued < cap:
            return None
        return f"{queued} null-sender messages queued from {key} (share {cap})"

    def _null_key(self, envelope: Envelope) -> str | None:
        if envelope.mail_from or not envelope.client:
            return None
        return host_key(envelope.client, self.config.store.ipv6_prefix)

    # -- the in-memory queue ---------------------------------------------------------------

    def _read_all(self, known: set[str]) -> list[tuple[Envelope, MessageState]]:
        out = []
        for queue_id in self.spool.ids():
            if queue_id in known:
                continue
            try:
                envelope = self.spool.read_envelope(queue_id)
            except (FileNotFoundError, IncompleteEnvelope):
                continue  # gone, or not a message yet
            except (OSError, ValueError, TypeError) as e:
                log.error("unreadable spool file skipped %s", kv(queue_id=queue_id, error=e))
                continue
            out.append((envelope, self.spool.load_state(envelope)))
        return out

    def _drop_orphan_states(self) -> None:
        for path in self.spool.state.glob("*.json"):
            if not self.spool.path(path.stem).exists():
                path.unlink(missing_ok=True)
        for path in self.spool.state.glob(".*.tmp"):
            path.unlink(missing_ok=True)

    def _add(self, envelope: Envelope, state: MessageState) -> None:
        if envelope.queue_id in self.entries:
            return
        entry = Entry(envelope, state)
        self.entries[envelope.queue_id] = entry
        key = self._null_key(envelope)
        if key is not None:
            self.null_queued[key] += 1
        self._schedule(entry, state.next_attempt)

    def _forget(self, queue_id: str) -> None:
        """The message has left the spool (delivered, bounced, expired or deleted)."""
        entry = self.entries.pop(queue_id, None)
        key = None if entry is None else self._null_key(entry.envelope)
        if key is not None:
            self.null_queued[key] -= 1
            if self.null_queued[key] <= 0:
                del self.null_queued[key]

    def _spooled(self, envelope: Envelope) -> None:
        """Spool listener (runs in the writer's thread): new mail is due at once."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._arrived, envelope)

    def _arrived(self, envelope: Envelope) -> None:
        self._add(envelope, MessageState.fresh(envelope))
        self.wake.set()

    def _schedule(self, entry: Entry, when: float) -> None:
        entry.due = when
        entry.state.next_attempt = when
        heapq.heappush(self.heap, (when, next(self.seq), entry.envelope.queue_id))

    def _idle(self, queue_id: str) -> bool:
        """Known, and not in the hands of a delivery or of _finalize."""
        entry = self.entries.get(queue_id)
        return entry is not None and not entry.inflight and not entry.finalizing

    async def _scan(self) -> None:
        """Pick up files the listener missed, forget deleted ones, re-read holds.

        Only a message known before the directory was listed can have been removed by the
        operator: one spooled while the listing ran is told to us by its listener before
        the listing comes back, and is missing from it only because it arrived late. The
        file of each candidate is looked for once more before the claim is made."""
        known = set(self.entries)
        on_disk = set(await asyncio.to_thread(self.spool.ids))
        vanished = [i for i in known - on_disk if self._idle(i)]
        if vanished:
            gone = await asyncio.to_thread(
                lambda: [i for i in vanished if not self.spool.path(i).exists()])
            for queue_id in gone:
                if self._idle(queue_id):
                    self._forget(queue_id)
                    log.info("removed from the queue by the operator %s",
                             kv(queue_id=queue_id))
        for envelope, state in await asyncio.to_thread(self._read_all, set(self.entries)):
            self._add(envelope, state)
        self.held = await asyncio.to_thread(self.spool.held)
        now = time.time()
        for queue_id, entry in self.entries.items():
            if entry.due < 0 and queue_id not in self.held:  # hold marker gone: due again
                self._schedule(entry, now)

    def _flush(self, requests: set[str]) -> None:
        ids = list(self.entries) if queue_admin.FLUSH_ALL in requests else requests
        for d in self.destinations.values():
            d.dead_until = 0.0
        now = time.time()
        for queue_id in ids:
            entry = self.entries.get(queue_id)
            if entry is not None and not entry.inflight and not entry.finalizing:
                self._schedule(entry, now)
        log.info("flush %s", kv(requested=",".join(sorted(requests)), messages=len(ids)))

    async def _run(self) -> None:
        last_scan = time.monotonic()
        while not self.stopping:
            try:
                requests: set[str] = set()
                if time.monotonic() - self._flush_checked >= FLUSH_CHECK_INTERVAL:
                    self._flush_checked = time.monotonic()
                    requests = await asyncio.to_thread(queue_admin.take_flush_requests, self.spool)
                if time.monotonic() - last_scan >= self.settings.scan_interval:
                    last_scan = time.monotonic()
                    await self._scan()
                if requests:  # holds made just before a flush must count
                    self.held = await asyncio.to_thread(self.spool.held)
                    self._flush(requests)
                if self.settings.enabled:
                    self._dispatch(time.time())
            except Exception:  # the scheduler must outlive any one bad file or surprise
                log.exception("delivery scheduler error")
            wait = min(FLUSH_CHECK_INTERVAL, self.settings.scan_interval)
            if self.heap and self.settings.enabled:
                wait = max(0.0, min(wait, self.heap[0][0] - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait)
            self.wake.clear()

    def _dispatch(self, now: float) -> None:
        while self.heap and self.heap[0][0] <= now:
            due, _, queue_id = heapq.heappop(self.heap)
            entry = self.entries.get(queue_id)
            if entry is None or entry.due != due or entry.inflight or entry.finalizing:
                continue
            if queue_id in self.held:
                entry.due = -1.0  # parked: a release (flush request) reschedules it
                continue
            groups: dict[str, list[str]] = {}
            for rcpt in entry.state.pending():
                groups.setdefault(self.route(rcpt), []).append(rcpt)
            if not groups:  # settled before a crash, not yet removed
                entry.inflight = 1
                task = asyncio.create_task(self._settle(entry, {}))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                continue
            for hop, rcpts in groups.items():
                dest = self.destinations.get(hop)
                if dest is None:
                    dest = self.destinations[hop] = Destination(hop)
                dest.pending.append(Unit(entry, rcpts))
                entry.inflight += 1
        self._spawn()

    def _spawn(self) -> None:
        """Open connections where work waits, within the per-destination and total limits."""
        active = sum(len(d.tasks) for d in self.destinations.values())
        for dest in self.destinations.values():
            while (len(dest.tasks) < min(len(dest.pending), self.settings.per_destination)
                   and active < self.settings.workers and not self.stopping):
                task = asyncio.create_task(self._connection(dest), name=f"deliver {dest.hop}")
                dest.tasks.add(task)
                task.add_done_callback(lambda t, d=dest: self._done(d, t))
                active += 1

    def _done(self, dest: Destination, task: asyncio.Task[None]) -> None:
        dest.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())
        if not self.stopping:
            self._spawn()

    def route(self, rcpt: str) -> str:
        """The next hop for a recipient: its hosted domain's, else (DSNs) dsn_relay or MX."""
        domain = normalise_domain(rcpt.rpartition("@")[2])
        hosted = self.hosted.get(domain)
        if hosted is not None:
            return hosted.next_hop
        return self.settings.dsn_relay or f"mx:{domain}"

    # -- talking to the next hop -------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if not self.settings.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _hosts(self, hop: str) -> list[tuple[str, int]]:
        if not hop.startswith("mx:"):
            return [parse_endpoint(hop)]
        domain = hop[3:]
        try:
            answer = await dns.asyncresolver.resolve(domain, "MX",
                                                     lifetime=self.settings.connect_timeout)
        except dns.resolver.NXDOMAIN:
            raise HopError(f"550 5.1.2 domain {domain} does not exist", permanent=True) from None
        except dns.resolver.NoAnswer:
            return [(domain, 25)]  # RFC 5321 5.1: no MX, the domain itself
        except dns.exception.DNSException as e:
            raise HopError(f"451 4.4.3 MX lookup for {domain} failed: {e}") from None
        records = sorted(answer, key=lambda r: r.preference)  # type: ignore[attr-defined]
        hosts = [r.exchange.to_text(omit_final_dot=True) for r in records]  # type: ignore[attr-defined]
        if hosts in ([""], ["."]):
            raise HopError(f"556 5.1.10 domain {domain} accepts no mail (null MX)",
                           permanent=True)
        return [(h, 25) for h in hosts if h not in ("", ".")]

    async def _open(self, dest: Destination) -> tuple[aiosmtplib.SMTP, str]:
        """Connect to the first host of the hop that answers, EHLO, STARTTLS per policy.
        Opportunistic TLS that fails in the handshake is retried in plain text (RFC 7435)."""
        last = "451 4.4.1 no host to connect to"
        for host, port in await self._hosts(dest.hop):
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

    async def _transaction(self, client: aiosmtplib.SMTP, hop: str, unit: Unit,
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

    async def _connection(self, dest: Destination) -> None:
        """Deliver the destination's waiting units over one reused connection."""
        client: aiosmtplib.SMTP | None = None
        name = dest.hop
        sent = 0
        try:
            while dest.pending and not self.stopping:
                unit = dest.pending.popleft()
                queue_id = unit.entry.envelope.queue_id
                results: dict[str, Result] = {}
                try:
                    if queue_id in self.held:  # held since dispatch: no attempt, no verdict
                        raise FileNotFoundError
                    if dest.dead_until > time.time():
                        raise HopError(dest.dead_reason)
                    _, message = await asyncio.to_thread(self.spool.read, queue_id)
                    if client is None or not client.is_connected:
                        try:
                            client, name = await self._open(dest)
                            sent = 0
                        except HopError as e:
                            if not e.permanent:
                                dest.dead_until = time.time() + self.settings.min_backoff
                                dest.dead_reason = e.reply
                            raise
                    await self._transaction(client, name, unit, message, results)
                    sent += 1
                except FileNotFoundError:
                    pass  # deleted or held by the operator: _finalize sees to it
                except HopError as e:
                    status = BOUNCED if e.permanent else PENDING
                    for rcpt in unit.recipients:
                        results.setdefault(rcpt, Result(status, e.reply, dest.hop))
                except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as e:
                    reply = f"451 4.4.2 lost connection with {name}: {e or type(e).__name__}"
                    for rcpt in unit.recipients:
                        results.setdefault(rcpt, Result(PENDING, reply, name))
                    if client is not None:
                        client.close()
                    client = None
                except Exception:  # a bug must not strand the message: retry it later
                    log.exception("delivery error %s", kv(queue_id=queue_id, hop=dest.hop))
                    for rcpt in unit.recipients:
                        results.setdefault(rcpt, Result(PENDING, "451 4.3.0 internal error",
                                                        dest.hop))
                    if client is not None:
                        client.close()
                    client = None
                if client is not None and (sent >= self.settings.messages_per_connection
                                           or not client.is_connected):
                    await self._quit(client)
                    client = None
                await self._settle(unit.entry, results)
        finally:
            if client is not None:
                await self._quit(client)

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        try:
            await asyncio.wait_for(client.quit(), 5)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()

    # -- outcomes ---------------------------------------------------------------------------

    async def _settle(self, entry: Entry, results: dict[str, Result]) -> None:
        """Apply one unit's replies; after the message's last unit, spool DSNs, save or
        remove."""
        now = time.time()
        envelope = entry.envelope
        expired = now - envelope.received >= self.settings.max_lifetime
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
            elif result.status == BOUNCED or expired:
                status = dsn.status_of(result.reply)
                reply = result.reply
                if result.status == PENDING:
                    status, reply = "4.4.7", f"delivery time expired; last reply: {reply}"
                rs.status = BOUNCED
                rs.reply = reply
                entry.failures.append(dsn.Failure(rcpt, status, reply, result.hop, now))
            else:
                self._event(entry, rcpt, "tempfail", "deferred", result)
        entry.inflight -= 1
        if entry.inflight > 0:
            return
        entry.inflight = 0
        entry.finalizing = True
        try:
            await self._finalize(entry, now)
        finally:
            entry.finalizing = False

    async def _finalize(self, entry: Entry, now: float) -> None:
        queue_id = entry.envelope.queue_id
        failures, entry.failures = entry.failures, []
        if failures and not await self._bounce(entry, failures):
            for f in failures:  # no DSN on disk: keep them pending, to fail again later
                entry.state.recipients[f.recipient].status = PENDING
        elif failures:
            for f in failures:
                self._event(entry, f.recipient, "reject", "bounced",
                            Result(BOUNCED, f.diagnostic, f.remote_mta))
        if not self.spool.path(queue_id).exists():
            self._forget(queue_id)
            return
        if not entry.state.pending():
            await asyncio.to_thread(self.spool.remove, queue_id)
            self._forget(queue_id)
            log.info("removed %s", kv(queue_id=queue_id, reason="all recipients settled"))
            return
        state = entry.state
        state.attempts += 1
        state.last_attempt = now
        delay = queue_admin.backoff(state.attempts, self.settings.min_backoff,
                                    self.settings.max_backoff)
        self._schedule(entry, now + delay)
        try:
            await asyncio.to_thread(self.spool.save_state, queue_id, state)
        except OSError as e:
            log.error("cannot save delivery state %s", kv(queue_id=queue_id, error=e))
        self.wake.set()

    async def _bounce(self, entry: Entry, failures: list[dsn.Failure]) -> bool:
        """Queue a DSN for `failures`; True once it is on disk (or none is due)."""
        envelope = entry.envelope
        if not dsn.wants_dsn(envelope):
            log.info("no DSN for the null sender %s", kv(queue_id=envelope.queue_id,
                                                        rcpts=len(failures)))
            return True
        try:
            _, message = await asyncio.to_thread(self.spool.read, envelope.queue_id)
            report, body = dsn.build(envelope, message, failures, hostname=self.hostname,
                                     node=self.node)
            await asyncio.to_thread(self.spool.write, report, body)
        except FileNotFoundError:
            return True
        except OSError as e:
            log.error("cannot queue a DSN %s", kv(queue_id=envelope.queue_id, error=e))
            return False
        log.info("dsn queued %s", kv(queue_id=envelope.queue_id, dsn=report.queue_id,
                                     to=f"<{envelope.mail_from}>", rcpts=len(failures)))
        return True

    def _event(self, entry: Entry, rcpt: str, action: str, reason: str,
               result: Result) -> None:
        envelope = entry.envelope
        code = int(result.reply[:3]) if result.reply[:3].isdigit() else 0
        detail = f"hop={result.hop} reply={result.reply}" if result.hop else result.reply
        self.events.emit(EventRecord(
            ts=EventRecord.now(), node=self.node, client=envelope.client,
            host=host_key(envelope.client, self.config.store.ipv6_prefix) if envelope.client
            else "", helo=envelope.helo[:255], stage="delivery",
            action=action, reason=reason, code=code, sender=envelope.mail_from[:320],
            recipient=rcpt, detail=detail, size=envelope.size, queue_id=envelope.queue_id,
        ))
        log.info("delivery %s", kv(
            queue_id=envelope.queue_id, status=reason, to=f"<{rcpt}>", hop=result.hop,
            delay=f"{time.time() - envelope.received:.1f}", reply=result.reply,
            attempts=entry.state.recipients[rcpt].attempts))
