"""`floodgate serve`: wires config, store, snapshots, filters and listeners together, reloads
on SIGHUP, and shuts down without cutting a transaction in half."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import faulthandler
import logging
import os
import platform
import signal
import ssl
import time

from sqlalchemy import Engine, inspect

from blocklist.protection import Protection
from filters.base import Filter
from filters.offload import start_worker
from filters.recipients import RecipientFilter
from relay.auth.authenticator import Authenticator
from relay.config import Config, ConfigError, load_config
from relay.config.domains import DomainConfig
from relay.delivery.client import NextHopClient
from relay.delivery.probe import probe
from relay.delivery.routing import Router
from relay.delivery.service import DeliveryService
from relay.delivery.spool import Spool
from relay.events.writer import EventWriter, prune_loop
from relay.hosts.gate import BlockGate
from relay.hosts.greylist import Greylist
from relay.hosts.scorer import Scorer
from relay.hosts.senders import SenderLists
from relay.hosts.tally import RunningScore
from relay.logs import kv
from relay.service.metrics import Metrics
from relay.service.reload import plan
from relay.service.scanners import build_attachments, build_dnsbl, build_scanners
from relay.smtp.fast import protocol_for
from relay.smtp.handler import SHUTTING_DOWN, Doorman, FloodgateSMTP, RelayHandler
from relay.smtp.observe import Observe
from relay.smtp.pipeline import Pipeline
from relay.smtp.verify import RecipientVerifier
from relay.store import aliases
from relay.store.database import (
    StoreError,
    current_revision,
    describe,
    head_revision,
    in_store_thread,
    make_engine,
    read_generation,
)
from relay.store.database import upgrade as upgrade_schema
from relay.store.polling import poll_every
from relay.version import installed

log = logging.getLogger("floodgate.serve")


def authenticator_of(config: Config) -> Authenticator | None:
    """[auth] enabled: the authenticator, its authserv-id the relay's hostname."""
    return Authenticator(config.auth, config.relay.hostname) if config.auth.enabled else None


class StartupError(Exception):
    """The relay cannot start; the message tells the operator what to fix."""


class AliasSnapshot:
    """Holds the current AliasBook and swaps in a new one when the store says it changed."""

    def __init__(self, engine: Engine, config: Config):
        self.engine = engine
        self.configure(config)
        self.book = aliases.AliasBook(frozenset(), frozenset(), self.case_sensitive,
                                      self.delimiter, -1)

    def configure(self, config: Config) -> None:
        """How addresses are matched; the next load applies it."""
        self.case_sensitive = config.relay.local_part_case == "sensitive"
        self.delimiter = config.relay.recipient_delimiter
        self.traps = list(config.scoring.traps)

    def outdated(self) -> None:
        """The next refresh loads the table whatever the store's change counter says."""
        self.book = dataclasses.replace(self.book, generation=-1)

    def load(self) -> None:
        started = time.monotonic()
        generation = aliases_generation(self.engine)
        self.book = aliases.load_book(self.engine, generation,
                                      case_sensitive=self.case_sensitive,
                                      delimiter=self.delimiter, extra_traps=self.traps)
        log.info("aliases loaded %s", kv(count=len(self.book), generation=generation,
                                        seconds=f"{time.monotonic() - started:.2f}"))

    def refresh(self) -> None:
        """Reload when the store's change counter moved (a store thread runs this, so RCPT
        never waits)."""
        if aliases_generation(self.engine) != self.book.generation:
            self.load()

    async def watch(self, interval: float) -> None:
        await poll_every(interval, self.refresh, logger=log.name,
                         failed="cannot refresh aliases, answering from the last snapshot",
                         recovered="store reachable again, alias snapshot current",
                         context=lambda: {"count": len(self.book)})

    def known(self, local: str, domain: str) -> bool:
        return self.book.known(local, domain)

    def trap(self, local: str, domain: str) -> bool:
        return self.book.trap(local, domain)


def aliases_generation(engine: Engine) -> int:
    return read_generation(engine, aliases.GENERATION_KEY)


def prepare_store(engine: Engine) -> None:
    """Create the schema in an empty database; refuse an outdated one (an operator step)."""
    try:
        tables = inspect(engine).get_table_names()
        current = current_revision(engine)
    except Exception as e:
        raise StartupError(f"cannot open the store: {describe(e)}") from e
    head = head_revision()
    if not tables:
        log.info("empty database, creating schema %s", kv(revision=head))
        try:
            upgrade_schema(engine)
        except StoreError as e:
            raise StartupError(str(e)) from e
    elif current != head:
        raise StartupError(
            f"database schema is at revision {current}, this Floodgate needs {head}: "
            "run `floodgate db upgrade`"
        )


def tls_context(config: Config) -> ssl.SSLContext | None:
    tls = config.relay.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as e:
        raise StartupError(f"relay.tls: cannot load certificate {tls.cert} / key {tls.key}: "
                           f"{e}") from e
    return ctx


def observe_of(config: Config) -> Observe:
    """[policy]: the hosted domains whose blocking and DNSBL refusals are only recorded."""
    observed = config.observed()
    return Observe(observed, everywhere=observed == frozenset(config.hosted()))


def observes_all(config: Config) -> bool:
    return observe_of(config).everywhere


class Relay:
    def __init__(self, config: Config, worker: int | None = None, path: str | None = None):
        """`worker`: this process's number under `serve --workers N` (None: the only one).
        Workers share the listening sockets (SO_REUSEPORT) and the spool; the supervisor
        prepares the spool, and only worker 0 runs delivery and serves the metrics (every
        worker's: relay/service/metrics.py). `path`: the configuration file a reload reads
        again (None: reload the same configuration)."""
        self.config = config
        self.worker = worker
        self.path = path
        self.engine = make_engine(config.store.url)
        self.hosted = config.hosted()
        self.snapshot = AliasSnapshot(self.engine, config)
        self.spool = Spool(config.relay.spool_dir)
        store = config.store
        self.events = EventWriter(self.engine, batch=store.event_batch,
                                  interval=store.event_flush_interval,
                                  capacity=store.event_buffer,
                                  offences=config.scoring.offences())
        protection = Protection.of_config(config)
        self.gate = BlockGate(self.engine, protection, store.ipv6_prefix)
        self.scorer = Scorer(self.engine, config.scoring, config.blocklist, protection,
                             config.relay.node, observe=observes_all(config))
        self.metrics = Metrics(build=(installed("floodgate") or "unknown",
                                      platform.python_version(),
                                      installed("aiosmtpd") or "unknown"))
        # the scanner sections and the filters built from them, reused while unchanged
        self.scanners: tuple[tuple[object, ...], list[Filter]] | None = None
        chain = self.metrics.timed(self.filters(config, self.hosted))
        self.greylist = Greylist(self.engine, config.greylist,
                                 protected=lambda c: self.gate.protection.why(c),
                                 ipv6_prefix=store.ipv6_prefix)
        self.senders = SenderLists(self.engine)
        self.handler = RelayHandler(
            node=config.relay.node, hostname=config.relay.hostname,
            pipeline=Pipeline(chain), spool=self.spool, events=self.events,
            max_recipients=config.relay.max_recipients, ipv6_prefix=store.ipv6_prefix,
            gate=self.gate.lookup, protected=lambda c: self.gate.protection.why(c),
            limits=config.limits, postmaster=config.postmaster(),
            hopcount_limit=config.relay.hopcount_limit, observe=observe_of(config),
            greylist=self.greylist.check, senders=self.senders,
        )
        self.delivery = DeliveryService(config, self.spool, self.events)
        self.delivery.outcomes.on_outcome = self.metrics.delivery_outcome
        self.handler.queue_full = self.delivery.queue_full
        self.handler.null_sender_full = self.delivery.null_sender_full
        self.handler.on_decision = self.metrics.decision
        self.handler.auth = authenticator_of(config)
        self.running: RunningScore | None = None
        if config.scoring.enabled:
            self.running = RunningScore(
                config.scoring, protected=lambda c: self.gate.protection.why(c),
                blocked=self.gate.lookup, on_blocks=self.gate.apply,
                score_now=lambda tallies: in_store_thread(self.scorer.run_hosts, tallies))
            self.handler.on_event = self.running.record
        self.metrics.watch(self, chain)
        self.servers: list[asyncio.AbstractServer] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = asyncio.Event()
        self.options: dict[str, object] = {}  # aiosmtpd's, for each new connection
        self.ready = asyncio.Event()
        self.reloading = asyncio.Lock()
        self.reloads: set[asyncio.Task[None]] = set()

    def filters(self, config: Config, hosted: dict[str, DomainConfig]) -> list[Filter]:
        """Every check, grouped by stage by the pipeline, cheapest first within a stage.
        The DNSBL and scanner filters are built again only when their sections changed: a
        reload that does not touch them keeps their verdict caches."""
        verifier = self.recipient_verifier(config, hosted)
        chain: list[Filter] = [RecipientFilter(
            hosted=hosted.__contains__, known=self.known, trap=self.snapshot.trap,
            verifies=verifier.verifies, verify=verifier.verify,
            timeout=1.0 + verifier.timeout)]
        attachments = build_attachments(config.attachments)
        if attachments is not None:  # DATA, before the scanners: no clamd round trip for it
            chain.append(attachments)
        sections = (config.dnsbl, config.clamav, config.spamassassin)
        if self.scanners is None or self.scanners[0] != sections:
            dnsbl = build_dnsbl(config.dnsbl)
            built = build_scanners(config.clamav, config.spamassassin)
            self.scanners = (sections, ([] if dnsbl is None else [dnsbl]) + built)
        return chain + self.scanners[1]

    def recipient_verifier(self, config: Config,
                           hosted: dict[str, DomainConfig]) -> RecipientVerifier:
        """Probes go out like deliveries ([delivery] TLS policy, MX lookups); a domain whose
        verify settings and next hop did not change keeps its cache over a reload."""
        client = NextHopClient(config.delivery, config.relay.hostname, Router(config).hosts)

        async def probe_hop(hop: str, address: str) -> tuple[bool | None, str]:
            return await probe(client, hop, address)

        verifier = RecipientVerifier(hosted, probe_hop)
        old = getattr(self, "verifier", None)
        if old is not None:
            for name, domain in verifier.domains.items():
                kept = old.domains.get(name)
                if kept is not None and (kept.settings, kept.hop) == (domain.settings,
                                                                      domain.hop):
                    kept.probe = probe_hop
                    verifier.domains[name] = kept
        self.verifier = verifier
        return verifier

    @staticmethod
    def smtp_options(config: Config, ctx: ssl.SSLContext | None) -> dict[str, object]:
        """aiosmtpd's options; each connection takes those in force when it opens."""
        relay = config.relay
        return {"hostname": relay.hostname, "ident": "ESMTP Floodgate",
                "data_size_limit": relay.max_message_size, "tls_context": ctx,
                "require_starttls": bool(ctx and relay.tls and relay.tls.required),
                "timeout": relay.idle_timeout, "enable_SMTPUTF8": False}

    def known(self, local: str, domain: str) -> bool:
        domain_config = self.hosted.get(domain)
        if domain_config is not None and domain_config.catch_all:
            return True
        return self.snapshot.known(local, domain)

    async def start_decisions(self) -> None:
        """What every front end decides with (the relay's SMTP listeners, and the policy
        service and milter beside a Postfix): the store, the alias and block snapshots
        and their watchers, the scanners' worker, the event writer, scoring, retention."""
        prepare_store(self.engine)
        try:
            await in_store_thread(self.snapshot.load)
            await in_store_thread(self.gate.load)
            await in_store_thread(self.senders.load)
        except Exception as e:
            raise StartupError(f"cannot load the alias table or blocks: {describe(e)}") from e
        clamav = self.config.clamav
        if clamav is not None and clamav.cache.enabled:  # its big-message splits run there
            await start_worker()
        self.tasks.append(asyncio.create_task(self.events.run(), name="events"))
        refresh = self.config.store.refresh_interval
        self.tasks.append(asyncio.create_task(self.snapshot.watch(refresh), name="aliases"))
        self.tasks.append(asyncio.create_task(self.gate.watch(refresh), name="gate"))
        self.tasks.append(asyncio.create_task(self.senders.watch(refresh), name="senders"))
        if self.config.scoring.enabled:
            self.tasks.append(asyncio.create_task(self.scorer.loop(), name="scoring"))
        keep = self.config.retention
        self.tasks.append(asyncio.create_task(
            prune_loop(self.engine, keep.events, keep.rollups, keep.interval), name="retention"))
        self.tasks.append(asyncio.create_task(self.greylist.prune_every(keep.interval),
                                              name="greylist"))

    async def stop_decisions(self) -> None:
        """Stop the watchers, flush the events, close the store."""
        watcher = [t for t in self.tasks if t.get_name() != "events"] + list(self.reloads)
        for t in watcher:
            t.cancel()
        events = [t for t in self.tasks if t.get_name() == "events"]
        if events:
            await self.events.close(events[0])
        log.info("stopped %s", kv(events_written=self.events.written,
                                  events_aggregated=self.events.aggregated,
                                  events_dropped=self.events.dropped))
        self.metrics.close()
        self.engine.dispose()

    async def start(self) -> None:
        try:
            if self.worker is None:  # workers: done once by the supervisor (it clears tmp/)
                self.spool.prepare()
        except OSError as e:
            raise StartupError(f"relay.spool_dir {self.spool.root}: {e.strerror}") from e
        await self.start_decisions()
        ctx = tls_context(self.config)
        metrics = self.config.metrics.endpoint()
        if metrics is not None and not self.worker:
            try:
                self.metrics.serve(*metrics)
            except OSError as e:
                raise StartupError(f"metrics.listen {self.config.metrics.listen}: "
                                   f"{e.strerror or e}") from e
        relay = self.config.relay
        self.options = self.smtp_options(self.config, ctx)
        # aiosmtpd's set-up cost, once per class (relay/smtp/fast.py) where it applies
        protocol, slow = protocol_for(FloodgateSMTP, **self.options)
        if slow is not None:
            log.warning("aiosmtpd fast set-up off, every session costs more %s",
                        kv(reason=slow))

        def smtp() -> FloodgateSMTP:
            return protocol(self.handler, **self.options)

        def doorman() -> Doorman:
            return Doorman(self.handler.door, smtp)

        loop = asyncio.get_running_loop()
        for host, port in relay.endpoints():
            bind = None if host == "*" else host
            try:
                # backlog: asyncio's default of 100 overflows in a connection flood (5,000
                # clients at once): the kernel then drops handshakes and clients wait
                # seconds for SYN-ACK retransmits. The kernel caps it at net.core.somaxconn.
                server = await loop.create_server(doorman, bind, port, reuse_address=True,
                                                  reuse_port=self.worker is not None,
                                                  backlog=4096)
            except OSError as e:
                await self.close_servers()
                why = "address already in use" if e.errno == errno.EADDRINUSE else e.strerror
                raise StartupError(f"cannot listen on {host}:{port}: {why}") from e
            self.servers.append(server)
        if self.worker:  # worker 0 reads its live values at each scrape; the others, here
            if self.metrics.shared is not None:
                self.tasks.append(asyncio.create_task(self.metrics.refresh_every(),
                                                      name="metrics"))
        else:
            await self.delivery.start()
        log.info("ready %s", kv(node=relay.node, worker=self.worker,
                               listen=",".join(relay.listen),
                               domains=",".join(sorted(self.hosted)),
                               aliases=len(self.snapshot.book),
                               smtp_setup="aiosmtpd" if slow else "fast"))
        self.ready.set()

    def request_reload(self) -> None:
        """SIGHUP: reload in a task of its own (one at a time, once started)."""
        task = asyncio.create_task(self.reload(), name="reload")
        self.reloads.add(task)
        task.add_done_callback(self.reloads.discard)

    async def reload(self) -> None:
        """Read the configuration again and apply what can change without a restart; load
        the aliases, the blocks and the TLS certificate and key again. Connections open now
        carry on (a session keeps its TLS and its error limits); new ones get the new
        settings. A configuration that cannot be used (check-config's problems, an
        unreadable certificate, a filter that cannot be built) changes nothing."""
        await self.ready.wait()
        async with self.reloading:
            try:
                loaded = self.config if self.path is None else load_config(self.path)
            except ConfigError as e:
                for problem in e.problems:  # the lines check-config prints
                    log.error("%s: %s", e.path, problem)
                self._reloaded(logging.ERROR, "failed", "the configuration has errors")
                return
            change = plan(self.config, loaded)
            config = change.config
            hosted = config.hosted()
            try:
                ctx = tls_context(config)
                chain = self.metrics.timed(self.filters(config, hosted))
            except Exception as e:  # StartupError says which file; anything else, what
                self._reloaded(logging.ERROR, "failed", str(e) if isinstance(
                    e, StartupError) else f"cannot build the filters: {e}")
                return
            if config.clamav is not None and config.clamav.cache.enabled:
                await start_worker()
            self._apply(config, hosted, ctx, chain)
            try:
                await in_store_thread(self.snapshot.load)
                await in_store_thread(self.gate.load)
                await in_store_thread(self.senders.load)
            except Exception as e:  # the watchers load both as soon as the store answers
                self.snapshot.outdated()
                self.gate.generation = -1
                self.senders.generation = -1
                store = f"unreachable, answering from the last snapshot ({describe(e)})"
            else:
                store = "aliases and blocks loaded"
            self._reloaded(logging.WARNING if change.kept else logging.INFO, "applied",
                           changed=",".join(change.changed) or "nothing",
                           kept=",".join(change.kept),
                           tls="reloaded" if ctx is not None else "off",
                           aliases=len(self.snapshot.book), store=store)

    def _apply(self, config: Config, hosted: dict[str, DomainConfig],
               ctx: ssl.SSLContext | None, chain: list[Filter]) -> None:
        """Swap the new parts in, all within one turn of the event loop: no command runs
        with half of them."""
        self.config = config
        self.hosted = hosted
        self.options = self.smtp_options(config, ctx)
        protection = Protection.of_config(config)
        self.handler.configure(
            pipeline=Pipeline(chain), max_recipients=config.relay.max_recipients,
            limits=config.limits, postmaster=config.postmaster(),
            hopcount_limit=config.relay.hopcount_limit, observe=observe_of(config))
        auth = self.handler.auth  # kept, with its DNS cache, while [auth] is unchanged
        made_from = (auth.config, auth.authserv_id) if auth is not None else None
        if made_from != ((config.auth, config.relay.hostname) if config.auth.enabled else None):
            self.handler.auth = authenticator_of(config)
        self.metrics.rewatch(chain)
        self.delivery.configure(config)
        self.events.offences = config.scoring.offences()
        self.scorer.configure(config.scoring, config.blocklist, protection,
                              observes_all(config))
        if self.running is not None:
            self.running.configure(config.scoring)
        self.gate.base_protection = protection
        self.snapshot.configure(config)
        self.greylist.configure(config.greylist)

    def _reloaded(self, level: int, outcome: str, why: str = "", **fields: object) -> None:
        """The one line a reload logs: its outcome, what changed, what was kept."""
        if outcome == "failed":
            text = "reload failed, running configuration kept"
        elif fields.get("kept"):
            text = "reload applied; kept keys need a restart to change"
        else:
            text = "reload applied"
        log.log(level, "%s %s", text, kv(worker=self.worker, outcome=outcome, error=why,
                                          **fields))

    async def close_servers(self) -> None:
        """Stop accepting; connections already open carry on."""
        for server in self.servers:
            server.close()
        self.servers.clear()

    async def stop(self) -> None:
        """Stop listening, let transactions in flight finish within the grace period,
        then say 421 to whoever is left and flush the events."""
        await self.close_servers()
        grace = self.config.relay.shutdown_grace
        deadline = time.monotonic() + grace
        busy = [c for c in self.handler.connections if c.in_transaction]
        log.info("shutting down %s", kv(connections=len(self.handler.connections),
                                       in_transaction=len(busy), grace=f"{grace:.0f}s"))
        while self.handler.connections:
            expired = time.monotonic() >= deadline
            for conn in list(self.handler.connections):
                if expired or not conn.in_transaction:
                    conn.close_with(SHUTTING_DOWN)
            if expired:
                break
            await asyncio.sleep(0.05)
        await self.delivery.stop(max(1.0, deadline - time.monotonic()))
        await self.stop_decisions()


async def run(config: Config, worker: int | None = None, path: str | None = None) -> None:
    relay = Relay(config, worker, path)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, relay.request_reload)  # waits for start
    await relay.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await relay.stop()


def serve(config: Config, worker: int | None = None, path: str | None = None) -> None:
    """Run on uvloop; FLOODGATE_EVENT_LOOP=asyncio picks asyncio's own loop (benchmarks).

    `kill -HUP <pid>` reloads (Relay.reload). `kill -USR1 <pid>` prints every thread's stack
    to stderr (the log), even with the event loop stuck: what to look at when a relay stops
    answering at 3 a.m.
    """
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional in spirit
        uvloop = None
    if uvloop is None or os.environ.get("FLOODGATE_EVENT_LOOP", "uvloop") == "asyncio":
        asyncio.run(run(config, worker, path))
    else:
        uvloop.run(run(config, worker, path))
