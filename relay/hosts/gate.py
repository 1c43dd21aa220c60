"""The connect gate: an in-memory snapshot of active blocks, refreshed from the store.

A blocked host costs one dict lookup and a 554 before the greeting; blocks written by any
relay sharing the store take effect here within `refresh_interval`.
"""

from __future__ import annotations

import ipaddress
import logging
from datetime import UTC, datetime

from sqlalchemy import Engine

from blocklist import blocks
from blocklist.hosts import host_key
from blocklist.protection import Protection
from blocklist.scoring import BlockState
from relay.logs import kv
from relay.store.database import read_generation
from relay.store.polling import poll_every

log = logging.getLogger("floodgate.gate")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockGate:
    def __init__(self, engine: Engine, protection: Protection, ipv6_prefix: int = 64):
        self.engine = engine
        self.base_protection = protection
        self.protection = protection
        self.ipv6_prefix = ipv6_prefix
        self.exact: dict[str, BlockState] = {}
        self.networks: list[tuple[IPNetwork, BlockState]] = []
        self._seen: dict[str, BlockState | None] = {}  # client -> _covering(client)
        self.generation = -1

    def load(self) -> None:
        generation = read_generation(self.engine, blocks.GENERATION_KEY)
        active = blocks.active_blocks(self.engine)
        allowed = [n for n, _, _ in blocks.allow_list(self.engine)]
        exact: dict[str, BlockState] = {}
        networks: list[tuple[IPNetwork, BlockState]] = []
        for b in active:
            self._place(b, exact, networks)
        self.exact, self.networks = exact, networks
        self.protection = self.base_protection.with_allow(allowed)
        self._seen = {}
        self.generation = generation

    def _place(self, b: BlockState, exact: dict[str, BlockState],
               networks: list[tuple[IPNetwork, BlockState]]) -> None:
        net = ipaddress.ip_network(b.network, strict=False)
        if net.prefixlen == net.max_prefixlen or (net.version == 6
                                                  and net.prefixlen == self.ipv6_prefix):
            exact[b.network] = b
        else:
            networks[:] = [(n, old) for n, old in networks if old.network != b.network]
            networks.append((net, b))

    def apply(self, active: list[BlockState]) -> None:
        """Blocks this relay has just written (or found), in force at once: the next
        connection is refused at the door without waiting for the next refresh."""
        for b in active:
            self._place(b, self.exact, self.networks)
        if active:
            self._seen = {}

    def lookup(self, client: str, now: datetime | None = None) -> BlockState | None:
        """The active block covering `client`, if any; protected hosts are never blocked."""
        now = now or datetime.now(UTC)
        try:
            block = self._seen[client]
        except KeyError:
            block = self._covering(client)
            if len(self._seen) >= 65_536:  # a flood of new addresses: start again
                self._seen.clear()
            self._seen[client] = block
        if block is None or block.expires <= now:
            return None
        return block

    def active_count(self, now: datetime) -> int:
        """Blocks (hosts and networks) in force at `now` (read by the metrics)."""
        loaded = [*self.exact.values(), *(b for _, b in self.networks)]
        return sum(1 for b in loaded if b.expires > now)

    def _covering(self, client: str) -> BlockState | None:
        """The loaded block covering `client` (expired or not), None if none or protected.
        Remembered per client until the next load: a blocked host knocking thousands of
        times a second was parsed and matched against every network each time."""
        block = self.exact.get(host_key(client, self.ipv6_prefix))
        if block is None and self.networks:
            try:
                ip = ipaddress.ip_address(client)
            except ValueError:
                return None
            block = next((b for net, b in self.networks
                          if net.version == ip.version and ip in net), None)
        if block is None or self.protection.why(client):
            return None
        return block

    def refresh(self) -> None:
        """Reload when the store's change counter moved (a store thread runs this)."""
        if read_generation(self.engine, blocks.GENERATION_KEY) != self.generation:
            self.load()
            log.info("blocks loaded %s", kv(active=len(self.exact) + len(self.networks),
                                           generation=self.generation))

    async def watch(self, interval: float) -> None:
        await poll_every(interval, self.refresh, logger=log.name,
                         failed="cannot refresh blocks, using the last snapshot",
                         recovered="blocks refreshing again")
