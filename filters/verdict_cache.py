"""Outbreak mode: remember verdicts by payload digest, bounded in entries and in time.

In the 2004 MyDoom.M outbreak the content filter spent its time rescanning the same worm.
Keyed by the digest of a decoded MIME leaf (or of a body), a verdict found once answers every
later copy, whatever its headers or recipients. LRU keeps the hot payloads; each entry has
its own expiry; an entry may be tied to a version (clamd's signature database) so that a
"clean" answer dies with the database that gave it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    expires: float
    version: str | None


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    size: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class VerdictCache(Generic[V]):
    """A bounded LRU with a TTL per entry and optional version pinning. Not thread-safe:
    it lives on the event loop, like the filters that use it."""

    def __init__(self, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._data: OrderedDict[str, _Entry[V]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, version: str | None = None) -> V | None:
        """The live value for `key`, or None. An entry stored with a version only counts
        while `version` is the same one."""
        entry = self._data.get(key)
        if entry is not None and (
            entry.expires <= self._clock()
            or (entry.version is not None and entry.version != version)
        ):
            del self._data[key]
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return entry.value

    def put(self, key: str, value: V, ttl: float, version: str | None = None) -> None:
        if ttl <= 0:
            return
        self._data[key] = _Entry(value, self._clock() + ttl, version)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._data.clear()

    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, len(self._data), self.evictions)
