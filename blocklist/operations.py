"""What an operator does to hosts: block, unblock, allow, and what `hosts show` says.

One owner for the CLI and the web API alike: every change is checked against the same
never-block rules and written to the audit trail under the name of whoever made it, so a
change made from a shell is as visible in `/api/audit` as one made from the console. The
front ends parse their input, call these, and render the answers in their own way.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, select

from blocklist import blocks
from blocklist.hosts import host_key
from blocklist.protection import Protection
from blocklist.replay import Unblock
from blocklist.scoring import OBSERVE_SOURCE, BlockState, score_hosts
from relay.config import Config
from relay.store.tables import Event
from relay.store.web_tables import AuditEntry


class BadNetwork(ValueError):
    """Not an address or network one may block or allow; the message says why."""


class NeverBlocked(Exception):
    """The network may never be blocked; the message says why."""


class NotFound(Exception):
    """Nothing to undo: the network is not blocked, or not in the store's allowlist."""


def network(text: str) -> str:
    """The canonical form of an address or network to block or allow (`0.0.0.0/0` is
    refused: it would block, or let in, every client there is)."""
    try:
        net = blocks.canonical_network(text)
    except ValueError:
        raise BadNetwork(f"{text!r} is not an IP address or network") from None
    if ipaddress.ip_network(net, strict=False).prefixlen == 0:
        raise BadNetwork("a block of every address is refused")
    return net


def protection(config: Config, engine: Engine) -> Protection:
    """The never-block rules as they stand now: configuration and the store's allowlist."""
    return Protection.of_config(config).with_allow(n for n, _, _ in blocks.allow_list(engine))


# -- changes, each audited ---------------------------------------------------------------


def block(config: Config, engine: Engine, net: str, seconds: float, reason: str, *,
          actor: str, node: str) -> BlockState:
    """Block `net` (from network()) now for `seconds`; NeverBlocked if the rules forbid it."""
    why = protection(config, engine).why(net)
    if why:
        raise NeverBlocked(f"{net} is never blocked: {why}")
    state = blocks.add_manual(engine, net, seconds, reason, node=node[:64])
    audit(engine, actor, "block", net, f"for {seconds:g}s: {state.reason}")
    return state


def unblock(engine: Engine, net: str, *, actor: str) -> None:
    """End the active block on `net` now (kept as history: blocks.remove says why)."""
    if not blocks.remove(engine, net):
        raise NotFound(f"{net} is not blocked")
    audit(engine, actor, "unblock", net)


def allow_add(engine: Engine, net: str, reason: str, *, actor: str) -> bool:
    """Never block `net`; False when it was already allowed (audited either way: the
    operator asked)."""
    added = blocks.allow_add(engine, net, reason)
    audit(engine, actor, "allow", net, reason)
    return added


def allow_remove(engine: Engine, net: str, *, actor: str) -> None:
    if not blocks.allow_remove(engine, net):
        raise NotFound(f"{net} is not in the store's allowlist")
    audit(engine, actor, "unallow", net)


@dataclass(frozen=True, slots=True)
class Allowed:
    network: str
    reason: str
    source: str  # config | store
    created_at: datetime | None


def allow_list(config: Config, engine: Engine) -> list[Allowed]:
    """The allowlist: the configuration's entries, then the store's."""
    return [*(Allowed(n, "", "config", None) for n in config.blocklist.allow),
            *(Allowed(n, r, "store", c) for n, r, c in blocks.allow_list(engine))]


# -- the audit trail ---------------------------------------------------------------------


def audit(engine: Engine, who: str, action: str, target: str, detail: str = "") -> None:
    with engine.begin() as conn:
        conn.execute(insert(AuditEntry).values(ts=datetime.now(UTC), who=who[:80],
                                               action=action, target=target[:64],
                                               detail=detail[:2000]))


@dataclass(frozen=True, slots=True)
class Audited:
    id: int
    ts: datetime
    who: str
    action: str
    target: str
    detail: str


def unblocks(engine: Engine, since: datetime) -> list[Unblock]:
    """The operator's unblocks since `since`, oldest first: `floodgate replay` ends its
    blocks where the operator ended the real ones."""
    with engine.connect() as conn:
        rows = conn.execute(select(AuditEntry.ts, AuditEntry.target, AuditEntry.who)
                            .where(AuditEntry.action == "unblock", AuditEntry.ts >= since)
                            .order_by(AuditEntry.ts, AuditEntry.id))
        return [Unblock(blocks.utc(ts), blocks.canonical_network(target), who)
                for ts, target, who in rows]


def audit_list(engine: Engine, limit: int) -> list[Audited]:
    """Newest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
        return [Audited(r.id, blocks.utc(r.ts), r.who, r.action, r.target, r.detail)
                for r in rows]


# -- hosts show --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReasonRow:
    reason: str
    weight: float
    count: int
    first: datetime
    last: datetime

    @property
    def points(self) -> float:
        return self.weight * self.count


@dataclass(frozen=True, slots=True)
class EventRow:
    ts: datetime
    stage: str
    action: str
    reason: str
    code: int | None
    count: int
    recipient: str
    detail: str


@dataclass(frozen=True, slots=True)
class HostView:
    """Everything `hosts show` says about one address, whichever front end shows it."""

    address: str
    host: str  # what it is counted as (IPv6: its prefix)
    score: float
    threshold: float
    window: float
    reasons: list[ReasonRow]
    events: list[EventRow]  # the most recent rows, newest first
    state: str  # never | blocked | observed | expired | pending | clear
    why: str
    block: BlockState | None  # the host's own block row, active or history


def show(config: Config, engine: Engine, address: str, recent: int = 20,
         now: datetime | None = None) -> HostView:
    """The score as the scorer counts it, the offences that made it, the recent events,
    and whether the host is blocked, by its own block or a wider network's, and why."""
    key = host_key(address, config.store.ipv6_prefix)
    now = now or datetime.now(UTC)
    weights = config.scoring.all_weights()
    rows = blocks.host_events(engine, key, now - timedelta(seconds=config.scoring.window))
    scored = score_hosts(rows, weights, config.scoring.bonus_floor).get(key)
    score = scored.score if scored else 0.0
    reasons = [ReasonRow(r.reason, weights.get(r.reason, 0.0), r.count, r.first, r.last)
               for r in sorted(rows, key=lambda r: (-r.count, r.reason))]
    with engine.connect() as conn:
        events = [EventRow(blocks.utc(ts), *rest) for ts, *rest in conn.execute(
            select(Event.ts, Event.stage, Event.action, Event.reason, Event.code,
                   Event.count, Event.recipient, Event.detail)
            .where(Event.host == key).order_by(Event.ts.desc()).limit(recent))]
    own = blocks.load_blocks(engine, [key]).get(key)
    state, why = _state(config, engine, key, own, score, now)
    return HostView(address, key, score, config.scoring.threshold, config.scoring.window,
                    reasons, events, state, why, own)


def _when(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _state(config: Config, engine: Engine, key: str, own: BlockState | None, score: float,
           now: datetime) -> tuple[str, str]:
    never = protection(config, engine).why(key)
    if never:
        return "never", f"never blocked: {never}"
    if own is not None and own.expires > now and own.source == OBSERVE_SOURCE:
        return "observed", (f"not blocked (observe mode): would have been blocked until "
                            f"{_when(own.expires)} UTC, level {own.level}: {own.reason}")
    if own is not None and own.expires > now:
        return "blocked", (f"blocked until {_when(own.expires)} UTC, level {own.level}, "
                           f"{own.source}: {own.reason}")
    wider = covering(key, [b for b in blocks.active_blocks(engine, now)
                           if b.source != OBSERVE_SOURCE])
    if wider is not None:
        return "blocked", (f"blocked: inside {wider.network} until {_when(wider.expires)} "
                           f"UTC, level {wider.level}, {wider.source}: {wider.reason}")
    if own is not None:
        return "expired", (f"not blocked: the last block (level {own.level}) ended "
                           f"{_when(own.expires)} UTC; offences before it do not count again")
    if score >= config.scoring.threshold:
        return "pending", "not blocked yet: at the threshold, the next scoring run blocks it"
    return "clear", "not blocked: score below the threshold"


def covering(key: str, active: list[BlockState]) -> BlockState | None:
    """The active block on a network wider than `key` that ends last, if any."""
    try:
        net = ipaddress.ip_network(key, strict=False)
    except ValueError:
        return None
    best: BlockState | None = None
    for b in active:
        wide = ipaddress.ip_network(b.network, strict=False)
        if (b.network != key and wide.version == net.version
                and net.subnet_of(wide)  # type: ignore[arg-type]
                and (best is None or b.expires > best.expires)):
            best = b
    return best
