"""Host scores and block decisions: pure functions over aggregated event rows.

Like rspamd's symbols and fail2ban's jails: events say what a host did, weights are
configuration, and a block is a threshold on the sum. Nothing here touches the store.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

NETWORK_PREFIX_V4 = 24


@dataclass(frozen=True, slots=True)
class Offences:
    """Events of one reason from one host, aggregated."""

    host: str
    reason: str
    count: int
    first: datetime
    last: datetime


@dataclass(slots=True)
class HostScore:
    host: str
    score: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    first_offence: datetime | None = None
    last_offence: datetime | None = None

    def summary(self, weights: dict[str, float]) -> str:
        """`unknown_rcpt=20 virus=1`: the reasons that scored, heaviest first."""
        parts = sorted(((n * weights.get(r, 0), r, n) for r, n in self.counts.items()
                        if weights.get(r, 0) > 0), reverse=True)
        return " ".join(f"{r}={n}" for _, r, n in parts)


def score_hosts(rows: Iterable[Offences], weights: dict[str, float],
                floor: float = -math.inf) -> dict[str, HostScore]:
    """Sum weights per host; only positive weights count as offences for the times.

    The negative part of a score (the `accepted` bonus) stops at `floor`: otherwise every
    message a host gets accepted buys it one more probe, without limit."""
    scores: dict[str, HostScore] = {}
    bonus: dict[str, float] = {}
    for row in rows:
        weight = weights.get(row.reason, 0.0)
        hs = scores.setdefault(row.host, HostScore(row.host))
        hs.counts[row.reason] = hs.counts.get(row.reason, 0) + row.count
        if weight < 0:
            bonus[row.host] = bonus.get(row.host, 0.0) + weight * row.count
            continue
        hs.score += weight * row.count
        if weight > 0:
            if hs.first_offence is None or row.first < hs.first_offence:
                hs.first_offence = row.first
            if hs.last_offence is None or row.last > hs.last_offence:
                hs.last_offence = row.last
    for host, negative in bonus.items():
        scores[host].score += max(negative, floor)
    return scores


def network_key(host: str, prefix: int = NETWORK_PREFIX_V4) -> str | None:
    """The IPv4 network a host counts towards as well (`192.0.2.0/24`); None for IPv6 keys,
    which are already networks (`store.ipv6_prefix`)."""
    if ":" in host or "/" in host:
        return None
    try:
        return str(ipaddress.IPv4Network(f"{host}/{prefix}", strict=False))
    except ValueError:
        return None


def score_networks(hosts: dict[str, HostScore], skip: Callable[[str], bool]
                   ) -> dict[str, HostScore]:
    """Per IPv4 /24, the sum of its hosts' positive scores, so that many hosts each staying
    under the host threshold are still seen. Hosts for which `skip` is true (blocked, or
    being blocked now) add nothing: their offences are paid for by their own block, and a
    single blocked host knocking on must not take its neighbours down with it."""
    nets: dict[str, HostScore] = {}
    for host, hs in hosts.items():
        net = network_key(host)
        if net is None or hs.score <= 0 or hs.last_offence is None or skip(host):
            continue
        ns = nets.setdefault(net, HostScore(net))
        ns.score += hs.score
        for reason, n in hs.counts.items():
            ns.counts[reason] = ns.counts.get(reason, 0) + n
        if ns.first_offence is None or (hs.first_offence or hs.last_offence) < ns.first_offence:
            ns.first_offence = hs.first_offence or hs.last_offence
        if ns.last_offence is None or hs.last_offence > ns.last_offence:
            ns.last_offence = hs.last_offence
    return nets


# The source of a block the scorer made in observe mode ([policy]): recorded, shown in
# `hosts show` as would-have-blocked, never refused by the gate nor exported to a firewall.
OBSERVE_SOURCE = "observe"


@dataclass(frozen=True, slots=True)
class BlockState:
    """What the store says about a network's block (active or expired history)."""

    network: str
    first_seen: datetime
    last_seen: datetime
    expires: datetime
    level: int
    source: str
    score: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BlockDecision:
    network: str
    score: float
    reason: str
    first_seen: datetime
    last_seen: datetime
    expires: datetime
    level: int
    source: str
    new: bool  # a new or renewed block, rather than an extension of an active one
    # An extension applies only if the block still ends here: an operator's unblock (or
    # another relay's write) between the scorer's read and its write must win.
    previous_expires: datetime | None = None

    def state(self) -> BlockState:
        """The block this decision puts in force, as the gate holds blocks."""
        return BlockState(self.network, self.first_seen, self.last_seen, self.expires,
                          self.level, self.source, self.score, self.reason)


def cutoff(block: BlockState | None, now: datetime) -> datetime | None:
    """Offences before this instant are already paid for: while a block is active, by the
    block (only later offences extend it); after it expired, by the time served."""
    if block is None:
        return None
    return block.last_seen if block.expires > now else block.expires


def decide(
    scores: dict[str, HostScore],
    blocks: dict[str, BlockState],
    *,
    threshold: float,
    duration: Callable[[int], float],
    recidive_window: float,
    protected: Callable[[str], str | None],
    weights: dict[str, float],
    now: datetime,
) -> list[BlockDecision]:
    """New blocks for hosts at or over the threshold, extensions for blocked hosts that
    keep offending. `scores` must already exclude offences before `cutoff()`."""
    decisions: list[BlockDecision] = []
    for host, hs in scores.items():
        if hs.last_offence is None or protected(host):
            continue
        block = blocks.get(host)
        active = block is not None and block.expires > now
        if active:
            assert block is not None
            expires = max(block.expires,
                          hs.last_offence + timedelta(seconds=duration(block.level)))
            if hs.last_offence <= block.last_seen and expires == block.expires:
                continue
            decisions.append(BlockDecision(
                host, max(block.score, hs.score), block.reason or hs.summary(weights),
                block.first_seen, max(block.last_seen, hs.last_offence), expires,
                block.level, block.source, new=False, previous_expires=block.expires))
            continue
        if hs.score < threshold:
            continue
        level = 1
        if block is not None and (now - block.expires).total_seconds() <= recidive_window:
            level = block.level + 1
        first = hs.first_offence or hs.last_offence
        decisions.append(BlockDecision(
            host, hs.score, hs.summary(weights), first, hs.last_offence,
            hs.last_offence + timedelta(seconds=duration(level)), level, "auto", new=True))
    return decisions
