"""The sender lists in memory: which envelope senders, From domains and HELO names are
allowed or refused, loaded from the store and reloaded when its counter moves.

A lookup is a few set probes (the address, its domain, each parent domain), so the lists
cost nothing measurable per MAIL FROM however long they grow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from blocklist import senders
from relay.logs import kv
from relay.store.polling import poll_every

log = logging.getLogger("floodgate.senders")


@dataclass(frozen=True, slots=True)
class Match:
    list: str  # allow | block
    what: str  # "sender x@y", "From domain y", "HELO h"
    pattern: str  # the entry that matched

    @property
    def detail(self) -> str:
        return f"{self.what} matches {self.pattern}"


class SenderLists:
    def __init__(self, engine: Engine | None):
        """`engine` None: empty lists, never loaded (a handler built without a store)."""
        self.engine = engine
        self.entries: dict[tuple[str, str], frozenset[str]] = {}
        self.generation = -1

    @property
    def allows(self) -> bool:
        """Any allow entry: the DNSBL's refusal then waits for MAIL FROM (an allowed
        sender lifts it)."""
        return any(self.entries.get(("allow", f)) for f in senders.FIELDS)

    def load(self) -> None:
        generation = senders.generation(self.engine)
        grouped: dict[tuple[str, str], set[str]] = {}
        for rule in senders.rules(self.engine):
            grouped.setdefault((rule.list, rule.field), set()).add(rule.pattern)
        self.entries = {k: frozenset(v) for k, v in grouped.items()}
        self.generation = generation

    def refresh(self) -> None:
        if senders.generation(self.engine) != self.generation:
            self.load()
            log.info("sender lists loaded %s", kv(
                generation=self.generation,
                **{f"{a}_{f}": len(self.entries.get((a, f), ())) for a in senders.LISTS
                   for f in senders.FIELDS}))

    async def watch(self, interval: float) -> None:
        await poll_every(interval, self.refresh, logger=log.name,
                         failed="cannot refresh the sender lists, using the last snapshot",
                         recovered="sender lists refreshing again")

    def _find(self, list_: str, field: str, keys: list[str], what: str) -> Match | None:
        entries = self.entries.get((list_, field))
        if not entries:
            return None
        hit = next((k for k in keys if k in entries), None)
        return None if hit is None else Match(list_, what, hit)

    def envelope(self, sender: str, helo: str) -> Match | None:
        """At MAIL FROM: an allow entry for the sender or the HELO name, else a block
        entry for either, else None. Allow comes first (the sender allowlist outranks
        the blocks)."""
        if not self.entries:
            return None
        sender_keys = senders.keys(sender)
        helo_keys = senders.name_keys(helo) if helo else []
        shown = f"sender <{sender}>"
        for list_ in senders.LISTS:
            found = (self._find(list_, "sender", sender_keys, shown)
                     or self._find(list_, "helo", helo_keys, f"HELO {helo}"))
            if found is not None:
                return found
        return None

    def from_domain(self, domain: str) -> Match | None:
        """At the end of DATA: the From header's domain on either list."""
        if not self.entries or not domain:
            return None
        keys = senders.name_keys(domain)
        return (self._find("allow", "sender", keys, f"From domain {domain}")
                or self._find("block", "sender", keys, f"From domain {domain}"))
