"""Selective greylisting: the first attempt of a (client network, sender, recipient)
triplet from a host without good history gets a `451 4.7.1`; a retry after `delay` and
within `retry_window` passes, and its network is allowlisted for `allow_lifetime`.

Never greylisted: protected clients (the never-block rules: allowlist, own addresses,
loopback), recipient domains that opt out, networks that passed before, and hosts with mail
accepted within `history` (one indexed events lookup, then remembered in memory: a host with
good history costs a dict lookup per RCPT). A network stores at most `max_pending` triplets
waiting for their retry: a bot with a fresh sender every attempt is greylisted all the same,
without a new row each time. Triplets live in the store, so a retry that
reaches another relay on the same store passes. A store that cannot answer greylists
nobody: greylisting is a nuisance for spammers, never a reason to lose mail.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from blocklist.hosts import host_key
from filters.address import normalise_domain
from filters.base import Verdict
from relay.config.greylist import GreylistConfig
from relay.logs import kv
from relay.store.database import describe, in_store_thread
from relay.store.greylist_tables import GreylistHost, GreylistTriplet
from relay.store.polling import poll_every
from relay.store.tables import Event

log = logging.getLogger("floodgate.greylist")

REMEMBER = 600.0  # seconds a good host is remembered in memory before the store is asked again
MAX_REMEMBERED = 65_536


def network_of(client: str, ipv6_prefix: int = 64) -> str:
    """The client's /24 (IPv4) or /`ipv6_prefix` (IPv6): a sender's outbound pool retries
    from a neighbouring address, as postgrey's --lookup-by-subnet assumes."""
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def triplet_key(network: str, sender: str, recipient: str) -> str:
    return hashlib.sha256(f"{network}\0{sender}\0{recipient}".encode(
        "utf-8", "surrogateescape")).hexdigest()


def greylisted(recipient: str, detail: str) -> Verdict:
    """Postfix's text for a policy service's defer (postgrey behind check_policy_service)."""
    return Verdict.tempfail(451, "4.7.1", "greylisted",
                            f"<{recipient}>: Recipient address rejected: Greylisted, "
                            "try again later", detail=detail)


def passed(detail: str) -> Verdict:
    return Verdict.accept(250, "2.1.5", "greylist_passed", "Ok", detail=detail)


class Greylist:
    def __init__(self, engine: Engine, config: GreylistConfig, *,
                 protected: Callable[[str], str | None], ipv6_prefix: int = 64,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.engine = engine
        self.protected = protected
        self.ipv6_prefix = ipv6_prefix
        self.clock = clock
        self._good: dict[str, float] = {}  # host key -> time.monotonic() until which it is
        self.configure(config)

    def configure(self, config: GreylistConfig) -> None:
        self.config = config
        self.opt_out = frozenset(config.opt_out)

    def exempt(self, client: str, recipient: str) -> bool:
        """Cheap in-memory reasons not to greylist: off, protected, opted out, or a host
        already known good."""
        if not self.config.enabled or self.protected(client):
            return True
        domain = normalise_domain(recipient.rpartition("@")[2])
        if domain in self.opt_out:
            return True
        until = self._good.get(host_key(client, self.ipv6_prefix))
        return until is not None and until > time.monotonic()

    async def check(self, client: str, sender: str, recipient: str) -> Verdict | None:
        """`greylisted` (451), `greylist_passed` (the retry that passed), or None (not
        greylisted: exempt, or known good)."""
        if self.exempt(client, recipient):
            return None
        try:
            return await in_store_thread(self.decide, client, sender, recipient)
        except Exception as e:
            log.warning("greylist store lookup failed, not greylisting %s",
                        kv(client=client, error=describe(e)))
            return None

    def _remember(self, host: str) -> None:
        if len(self._good) >= MAX_REMEMBERED:
            self._good.clear()
        self._good[host] = time.monotonic() + min(REMEMBER, self.config.allow_lifetime)

    def decide(self, client: str, sender: str, recipient: str) -> Verdict | None:
        """In a store thread: the store's answer for this triplet."""
        cfg = self.config
        now = self.clock()
        host = host_key(client, self.ipv6_prefix)
        network = network_of(client, self.ipv6_prefix)
        sender = (sender or "<>").lower()
        recipient = recipient.lower()
        with self.engine.begin() as conn:
            if self._good_history(conn, host, network, now):
                self._remember(host)
                return None
            key = triplet_key(network, sender, recipient)
            row = conn.execute(select(GreylistTriplet.first_seen, GreylistTriplet.passed)
                               .where(GreylistTriplet.key == key)).first()
            if row is None:
                if self._pending(conn, network, now) >= cfg.max_pending:
                    # a bot with a fresh sender every attempt: greylisted all the same, but
                    # its rows stop here; the network's stored triplets can still pass
                    return greylisted(recipient, f"new triplet not stored, "
                                                 f"{cfg.max_pending} pending network={network}")
                ins = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)
                conn.execute(ins(GreylistTriplet).values(
                    key=key, network=network, sender=sender[:320], recipient=recipient[:320],
                    first_seen=now, last_seen=now, passed=None, attempts=1,
                ).on_conflict_do_nothing())
                return greylisted(recipient, f"new triplet network={network}")
            first = _utc(row.first_seen)
            waited = (now - first).total_seconds()
            if row.passed is None and waited > cfg.retry_window:
                conn.execute(update(GreylistTriplet).where(GreylistTriplet.key == key).values(
                    first_seen=now, last_seen=now, attempts=1))
                return greylisted(recipient, f"retry after the window network={network}")
            if row.passed is None and waited < cfg.delay:
                conn.execute(update(GreylistTriplet).where(GreylistTriplet.key == key).values(
                    last_seen=now, attempts=GreylistTriplet.attempts + 1))
                return greylisted(recipient, f"retry too early ({waited:.0f}s of "
                                             f"{cfg.delay:g}s) network={network}")
            conn.execute(update(GreylistTriplet).where(GreylistTriplet.key == key).values(
                last_seen=now, passed=now, attempts=GreylistTriplet.attempts + 1))
            self._allow(conn, network, now + timedelta(seconds=cfg.allow_lifetime))
        self._remember(host)
        return passed(f"retried after {waited:.0f}s network={network}")

    def _good_history(self, conn: Connection, host: str, network: str, now: datetime) -> bool:
        """The network passed before (auto-allowlist), or the host had mail accepted
        within `history` (the events' (host, ts) index: a short range per host)."""
        allowed = conn.execute(select(GreylistHost.network).where(
            GreylistHost.network == network, GreylistHost.expires > now)).first()
        if allowed is not None:
            return True
        since = now - timedelta(seconds=self.config.history)
        accepted = conn.execute(select(Event.id).where(
            Event.host == host, Event.ts >= since, Event.reason == "accepted").limit(1)).first()
        return accepted is not None

    def _pending(self, conn: Connection, network: str, now: datetime) -> int:
        """The network's triplets still waiting for a retry that could pass (within the
        retry window), counted up to `max_pending`: a short range of (network, first_seen)."""
        since = now - timedelta(seconds=self.config.retry_window)
        waiting = (select(GreylistTriplet.key)
                   .where(GreylistTriplet.network == network,
                          GreylistTriplet.first_seen >= since,
                          GreylistTriplet.passed.is_(None))
                   .limit(self.config.max_pending).subquery())
        return conn.execute(select(func.count()).select_from(waiting)).scalar_one()

    def prune(self) -> tuple[int, int]:
        """Forget triplets not seen for longer than both the retry window and the allow
        lifetime (nothing they could still decide), and expired allow entries."""
        cfg = self.config
        now = self.clock()
        stale = now - timedelta(seconds=max(cfg.retry_window + cfg.delay, cfg.allow_lifetime))
        with self.engine.begin() as conn:
            triplets = conn.execute(delete(GreylistTriplet).where(
                GreylistTriplet.last_seen < stale)).rowcount or 0
            hosts = conn.execute(delete(GreylistHost).where(
                GreylistHost.expires < now)).rowcount or 0
        if triplets or hosts:
            log.info("greylist pruned %s", kv(triplets=triplets, networks=hosts))
        return triplets, hosts

    async def prune_every(self, interval: float) -> None:
        """With the retention task's interval; relays sharing a store may all run it."""
        await poll_every(interval, self.prune, logger=log.name,
                         failed="greylist pruning failed, will retry",
                         recovered="greylist pruning running again", first=True)

    @staticmethod
    def _allow(conn: Connection, network: str, expires: datetime) -> None:
        ins = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(GreylistHost)
        conn.execute(ins.values(network=network, expires=expires, passes=1).on_conflict_do_update(
            index_elements=["network"],
            set_={"expires": expires, "passes": GreylistHost.passes + 1}))


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts
