"""The content filters built from their sections ([dnsbl], [clamav], [spamassassin]).

The composition root builds them (the relay, `floodgate scan`, `floodgate hosts check`, the
tests); relay.config stays data only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from filters.address import normalise_domain
from filters.attachments import AttachmentFilter, Policy, policy_of
from filters.base import Action, Context, Filter, Verdict
from filters.clamav import ClamAVFilter, ClamdClient, ClamdPool
from filters.verdict_cache import VerdictCache
from relay.config.attachments import AttachmentsConfig
from relay.config.clamav import ClamAVConfig
from relay.config.dnsbl import DnsblConfig
from relay.config.spamassassin import SpamAssassinConfig
from relay.config.types import OnError

if TYPE_CHECKING:  # aiospamc and the DNS library are loaded only when their filter is built
    from filters.dnsbl import DnsblFilter
    from filters.spamassassin import SpamAssassinFilter


def _addresses(v: str | list[str]) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


def _action(on_error: OnError) -> Action:
    return Action.ACCEPT if on_error == "accept" else Action.TEMPFAIL


def _clamd(cfg: ClamAVConfig) -> ClamdClient | ClamdPool:
    """`concurrency` is per clamd: each has its own MaxThreads."""
    clients = [ClamdClient(a, timeout=cfg.timeout, concurrency=cfg.concurrency)
               for a in _addresses(cfg.address)]
    return clients[0] if len(clients) == 1 else ClamdPool(clients)


def build_attachments(cfg: AttachmentsConfig | None) -> AttachmentFilter | None:
    """The attachment policy, or None without the section (or disabled). A message is
    judged by the union of its recipients' domains' lists: one DATA answers for all."""
    if cfg is None or not cfg.enabled:
        return None
    default = policy_of(cfg.banned_extensions, cfg.banned_types)
    own = {d: policy_of(*cfg.lists_for(d)) for d in cfg.domains}

    def policy_for(rcpts: list[str]) -> Policy:
        chosen = {own.get(normalise_domain(r.rpartition("@")[2]), default) for r in rcpts}
        if len(chosen) == 1:
            return chosen.pop()
        return Policy(frozenset().union(*(p.extensions for p in chosen)),
                      frozenset().union(*(p.types for p in chosen)))

    return AttachmentFilter(policy_for)


def build_clamav(cfg: ClamAVConfig) -> ClamAVFilter:
    cache = VerdictCache[str](cfg.cache.max_entries) if cfg.cache.enabled else None
    return ClamAVFilter(
        _clamd(cfg),
        on_error=_action(cfg.on_error), max_size=cfg.max_size, on_oversize=cfg.on_oversize,
        on_limits=cfg.on_limits, max_file_size=cfg.max_file_size,
        max_scan_size=cfg.max_scan_size, cache=cache, infected_ttl=cfg.cache.infected_ttl,
        clean_ttl=cfg.cache.clean_ttl, version_interval=cfg.cache.version_interval,
    )


def build_spamassassin(cfg: SpamAssassinConfig) -> SpamAssassinFilter:
    from filters.spamassassin import SpamAssassinFilter, SpamResult, Thresholds

    cache = VerdictCache[SpamResult](cfg.cache.max_entries) if cfg.cache.enabled else None
    return SpamAssassinFilter(
        cfg.address, timeout=cfg.timeout, on_error=_action(cfg.on_error),
        tag_score=cfg.tag_score, reject_score=cfg.reject_score,
        domains={d: Thresholds(t.tag_score, t.reject_score) for d, t in cfg.domains.items()},
        max_size=cfg.max_size, on_oversize=cfg.on_oversize, concurrency=cfg.concurrency,
        cache=cache, cache_ttl=cfg.cache.ttl,
    )


def build_scanners(clamav_cfg: ClamAVConfig | None,
                   spam_cfg: SpamAssassinConfig | None) -> list[Filter]:
    """DATA-stage filters in cost order: virus (cheap, and refuses outbreaks) before spam.
    Nothing connects here: each scan opens its own connection."""
    filters: list[Filter] = []
    if clamav_cfg is not None and clamav_cfg.enabled:
        filters.append(build_clamav(clamav_cfg))
    if spam_cfg is not None and spam_cfg.enabled:
        filters.append(build_spamassassin(spam_cfg))
    return filters


async def scan_message(filters: list[Filter], content: bytes,
                       rcpts: list[str] | None = None) -> list[tuple[str, Verdict | None]]:
    """For `floodgate scan`: every filter's own verdict on one message (none stops the
    others, unlike the pipeline), so an operator sees each scanner's opinion."""
    ctx = Context(client="127.0.0.1", rcpts=list(rcpts or []), content=content)
    results: list[tuple[str, Verdict | None]] = []
    for f in filters:
        results.append((f.name, await f.check(ctx)))
    return results


def build_dnsbl(cfg: DnsblConfig) -> DnsblFilter | None:
    """The CONNECT-stage filter, or None when disabled or no zone is configured."""
    if not cfg.enabled or not cfg.zones:
        return None
    c = cfg.cache
    from filters import dnsbl as dns

    return dns.DnsblFilter(
        [dns.Zone(name, z.weight, z.codes, z.nameserver, z.timeout)
         for name, z in cfg.zones.items()],
        reject_score=cfg.reject_score, nameserver=cfg.nameserver, timeout=cfg.timeout,
        on_error=Action.ACCEPT if cfg.on_error == "accept" else Action.TEMPFAIL,
        cache=VerdictCache[dns.ZoneAnswer](c.max_entries) if c.enabled else None,
        min_ttl=c.min_ttl, max_ttl=c.max_ttl, negative_ttl=c.negative_ttl,
    )
