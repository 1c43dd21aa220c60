"""Per-client connection limits, as Postfix's anvil: concurrency, rate and a global cap.

Checked when the TCP connection is made, before the DNSBL or anything else that costs a
round trip, so a flood from one host is refused for the price of one short write.
IPv6 clients are counted per network (`store.ipv6_prefix`, a /64 by default): one
customer owns the whole /64 and can pick any address in it.
"""

from __future__ import annotations

import collections
import ipaddress
import time
from collections.abc import Callable

from blocklist.hosts import host_key
from filters.base import Verdict
from relay.config.limits import LimitsConfig

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def too_many(reason: str, text: str, detail: str) -> Verdict:
    return Verdict.tempfail(421, "4.7.0", reason, text, detail=detail)


BUSY_TEXT = "Too many connections, try again later"


class ConnectionLimiter:
    """Counts open connections per host key and recent ones per rate window."""

    def __init__(self, config: LimitsConfig, ipv6_prefix: int = 64,
                 clock: Callable[[], float] = time.monotonic):
        self.ipv6_prefix = ipv6_prefix
        self.clock = clock
        self.configure(config)
        self.total = 0
        self.open: collections.Counter[str] = collections.Counter()
        self.recent: dict[str, collections.deque[float]] = {}
        self._last_sweep = clock()

    def configure(self, config: LimitsConfig) -> None:
        """New limits (a reload); the connections counted so far stay counted."""
        self.config = config
        self.exempt: tuple[_Net, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in config.exempt)
        self._exempt_seen: dict[str, bool] = {}  # parsing and matching every time cost 1%

    def is_exempt(self, client: str) -> bool:
        if not self.exempt:
            return False
        known = self._exempt_seen.get(client)
        if known is None:
            if len(self._exempt_seen) >= 65_536:  # a flood of new addresses: start again
                self._exempt_seen.clear()
            known = self._exempt_seen[client] = self._in_exempt(client)
        return known

    def _in_exempt(self, client: str) -> bool:
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(ip.version == n.version and ip in n for n in self.exempt)

    def admit(self, client: str) -> Verdict | None:
        """None: the connection is admitted and counted (call `release` once when it ends).
        Otherwise the 421 to send; nothing was counted."""
        cfg = self.config
        if cfg.max_connections and self.total >= cfg.max_connections:
            return Verdict.tempfail(421, "4.3.2", "busy", BUSY_TEXT,
                                    detail=f"{self.total} connections open")
        key = host_key(client, self.ipv6_prefix)
        if not self.is_exempt(client):
            if cfg.max_per_client and self.open[key] >= cfg.max_per_client:
                return too_many("rate_limit", "Too many connections from your host, "
                                "try again later", f"concurrent {self.open[key]} ({key})")
            if cfg.connection_rate and not self._rate_ok(key):
                return too_many("rate_limit", "Too many connections from your host, slow "
                                "down", f"rate over {cfg.connection_rate} per "
                                f"{cfg.rate_window:g}s ({key})")
        self.total += 1
        self.open[key] += 1
        return None

    def release(self, client: str) -> None:
        key = host_key(client, self.ipv6_prefix)
        self.total = max(0, self.total - 1)
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]

    def _rate_ok(self, key: str) -> bool:
        now = self.clock()
        horizon = now - self.config.rate_window
        times = self.recent.setdefault(key, collections.deque())
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) >= self.config.connection_rate:
            return False
        times.append(now)
        if now - self._last_sweep > self.config.rate_window:
            self._sweep(horizon)
        return True

    def _sweep(self, horizon: float) -> None:
        """Forget hosts with no connection inside the window, so the table stays small."""
        self._last_sweep = self.clock()
        for key in [k for k, t in self.recent.items() if not t or t[-1] <= horizon]:
            del self.recent[key]
