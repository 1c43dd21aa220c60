"""Blocks and the allowlist in the store: reading offences, writing decisions."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, String, and_, case, delete, func, not_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import aliased

from blocklist.export import utc
from blocklist.replay import EventRow
from blocklist.scoring import BlockDecision, BlockState, Offences
from relay.store.database import bump_generation
from relay.store.sqltypes import as_event_time
from relay.store.tables import SUMMARY_HOST, Allow, Block, Event, events_counted

GENERATION_KEY = "blocks_generation"


def canonical_network(text: str) -> str:
    """`192.0.2.7`, `192.0.2.0/24`, `2001:db8::/64`: single addresses stay bare."""
    net = ipaddress.ip_network(text.strip(), strict=False)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def _upsert(engine: Engine, table):  # type: ignore[no-untyped-def]
    return (pg_insert if engine.dialect.name == "postgresql" else sqlite_insert)(table)


_BLOCK = Block.__table__


def _state(b) -> BlockState:  # type: ignore[no-untyped-def]
    return BlockState(b.network, utc(b.first_seen), utc(b.last_seen), utc(b.expires), b.level,
                      b.source, b.score, b.reason)


def load_blocks(engine: Engine, networks: Iterable[str] | None = None
                ) -> dict[str, BlockState]:
    """Every block row (or those of `networks`), history included (escalation needs the
    expired ones)."""
    stmt = select(_BLOCK)
    if networks is not None:
        stmt = stmt.where(_BLOCK.c.network.in_(list(networks)))
    with engine.connect() as conn:
        return {b.network: _state(b) for b in conn.execute(stmt)}


def _network_of(host):  # type: ignore[no-untyped-def]
    """`192.0.2.7` -> `192.0.2.0/24` in SQL (both SQLite and PostgreSQL have rtrim with a
    character set); an IPv6 key gives a string no block has."""
    return func.rtrim(host, "0123456789", type_=String).concat("0/24")


def load_offences(engine: Engine, *, since: datetime, now: datetime,
                  reasons: list[str]) -> list[Offences]:
    """Events per host and reason since `since`, minus what a block already paid for.

    Paid for: offences before the cut of the host's own block or of its /24's block
    (scoring.cutoff). Not offences at all: `blocked` refusals made after the refusing
    block had ended (a relay refuses from its snapshot for up to refresh_interval after
    an unblock), `accepted` mail from the null sender (the cheapest mail to send), and
    the accepted events summarised across hosts in a flood (relay/events/writer.py).
    """
    net = aliased(Block)
    stmt = (
        _offences()
        .outerjoin(Block, Block.network == Event.host)
        .outerjoin(net, net.network == _network_of(Event.host))
        .where(Event.ts >= since, Event.reason.in_(reasons),
               or_(Block.id.is_(None), Event.ts > _cut(Block, now)),
               or_(net.id.is_(None), Event.ts > _cut(net, now)))
        .group_by(Event.host, Event.reason)
    )
    with engine.connect() as conn:
        return [Offences(h, r, int(n), utc(a), utc(b)) for h, r, n, a, b in conn.execute(stmt)]


def _offences():  # type: ignore[no-untyped-def]
    """Events per host and reason, minus what is no offence at all (load_offences says
    which); `hosts show` lists these too, so it counts what the scorer counts."""
    refusing = aliased(Block)
    return (
        select(Event.host, Event.reason, events_counted(), func.min(Event.ts), func.max(Event.ts))
        .select_from(Event)
        .outerjoin(refusing, and_(Event.reason == "blocked", refusing.network == Event.detail))
        .where(Event.host != SUMMARY_HOST,
               or_(refusing.id.is_(None), Event.ts < as_event_time(refusing.expires)),
               not_(and_(Event.reason == "accepted", func.coalesce(Event.sender, "") == "")))
    )


def _cut(block, now: datetime):  # type: ignore[no-untyped-def]
    """scoring.cutoff in SQL: last_seen while the block is active, its end after."""
    return case((block.expires > now, as_event_time(block.last_seen)),
                else_=as_event_time(block.expires))


def host_events(engine: Engine, host: str, since: datetime) -> list[Offences]:
    """One host's offences of every reason since `since`, those a block paid for included
    (they made the score that blocked it)."""
    stmt = (_offences().where(Event.host == host, Event.ts >= since)
            .group_by(Event.host, Event.reason))
    with engine.connect() as conn:
        return [Offences(h, r, int(n), utc(a), utc(b)) for h, r, n, a, b in conn.execute(stmt)]


def events_in_order(engine: Engine, *, since: datetime, reasons: list[str]
                    ) -> Iterator[EventRow]:
    """Events of `reasons` since `since`, oldest first, for a replay (blocklist/replay.py):
    one by one, as the running tally saw them. The hosts summary row is no host's."""
    stmt = (select(Event.ts, Event.host, Event.reason, func.coalesce(Event.count, 1),
                   func.coalesce(Event.sender, "") != "", Event.detail)
            .where(Event.ts >= since, Event.reason.in_(reasons), Event.host != SUMMARY_HOST)
            .order_by(Event.ts, Event.id))
    with engine.connect() as conn:
        for ts, host, reason, count, sender, detail in conn.execution_options(
                yield_per=10_000).execute(stmt):
            yield EventRow(utc(ts), host, reason, int(count), bool(sender),
                           detail if reason == "blocked" else "")


def block_rows(engine: Engine) -> list[tuple[BlockState, datetime]]:
    """Every block row with the time its latest block was made (`created_at`)."""
    with engine.connect() as conn:
        return [(_state(b), utc(b.created_at)) for b in conn.execute(select(_BLOCK))]


def write_decisions(engine: Engine, decisions: list[BlockDecision], node: str,
                    now: datetime) -> None:
    """Upsert by network: relays sharing a store converge on one row per network.

    An extension is a compare-and-set on the expiry the scorer read: if the block was
    ended (unblocked) or changed since, the extension is dropped and the next run decides
    again from what the store holds then.
    """
    if not decisions:
        return
    with engine.begin() as conn:
        for d in decisions:
            values = {"network": d.network, "reason": d.reason[:2000], "score": d.score,
                      "first_seen": d.first_seen, "last_seen": d.last_seen,
                      "expires": d.expires, "created_at": now, "source": d.source,
                      "level": d.level, "node": node}
            changes = {k: v for k, v in values.items() if k != "network"}
            if not d.new and d.previous_expires is not None:
                changes.pop("created_at")
                conn.execute(update(Block).where(Block.network == d.network,
                                                 Block.expires == d.previous_expires)
                             .values(**changes))
                continue
            stmt = _upsert(engine, Block).values(**values)
            conn.execute(stmt.on_conflict_do_update(index_elements=["network"], set_=changes))
        bump_generation(conn, GENERATION_KEY)


def active_blocks(engine: Engine, now: datetime | None = None) -> list[BlockState]:
    now = now or datetime.now(UTC)
    with engine.connect() as conn:
        rows = conn.execute(select(_BLOCK).where(_BLOCK.c.expires > now)
                            .order_by(_BLOCK.c.expires.desc()))
        return [_state(b) for b in rows]


def add_manual(engine: Engine, network: str, seconds: float, reason: str, node: str = "cli",
               now: datetime | None = None) -> BlockState:
    now = now or datetime.now(UTC)
    net = canonical_network(network)
    expires = now + timedelta(seconds=seconds)
    decision = BlockDecision(net, 0.0, reason or "manual", now, now, expires, 1, "manual",
                             new=True)
    write_decisions(engine, [decision], node, now)
    return BlockState(net, now, now, expires, 1, "manual", 0.0, decision.reason)


def remove(engine: Engine, network: str, now: datetime | None = None) -> bool:
    """End an active block now; False when `network` was not blocked.

    The row stays, expired: deleting it would let every offence behind an automatic block
    count again and the next scoring run would block the host straight back. Its level goes
    to 0, so an operator's unblock is not held against the host as a repeat offence.
    """
    now = now or datetime.now(UTC)
    net = canonical_network(network)
    with engine.begin() as conn:
        ended = conn.execute(update(Block).where(Block.network == net, Block.expires > now)
                             .values(expires=now, level=0)).rowcount
        if ended:
            bump_generation(conn, GENERATION_KEY)
    return bool(ended)


def prune(engine: Engine, before: datetime) -> int:
    """Forget blocks that expired before `before` (history kept until then)."""
    with engine.begin() as conn:
        return conn.execute(delete(Block).where(Block.expires < before)).rowcount or 0


def allow_add(engine: Engine, network: str, reason: str = "") -> bool:
    net = canonical_network(network)
    with engine.begin() as conn:
        done = conn.execute(_upsert(engine, Allow).values(
            network=net, reason=reason, created_at=datetime.now(UTC))
            .on_conflict_do_nothing(index_elements=["network"])).rowcount
        bump_generation(conn, GENERATION_KEY)
    return bool(done)


def allow_remove(engine: Engine, network: str) -> bool:
    net = canonical_network(network)
    with engine.begin() as conn:
        gone = conn.execute(delete(Allow).where(Allow.network == net)).rowcount
        if gone:
            bump_generation(conn, GENERATION_KEY)
    return bool(gone)


def allow_list(engine: Engine) -> list[tuple[str, str, datetime]]:
    with engine.connect() as conn:
        rows = conn.execute(select(Allow.network, Allow.reason, Allow.created_at)
                            .order_by(Allow.network)).all()
    return [(n, r, utc(c)) for n, r, c in rows]


