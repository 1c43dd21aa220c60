"""Routing: the next hop for a recipient (its hosted domain's next_hop; for other domains,
that is DSNs, dsn_relay or the domain's MX) and the hosts that answer for a hop."""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.resolver

from filters.address import normalise_domain
from relay.config import Config
from relay.config.domains import DomainConfig
from relay.config.types import parse_endpoint


class HopError(Exception):
    """No usable connection to a destination; `permanent` bounces instead of deferring."""

    def __init__(self, reply: str, permanent: bool = False):
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent


class Router:
    def __init__(self, config: Config):
        self.hosted: dict[str, DomainConfig] = config.hosted()
        self.settings = config.delivery

    def route(self, rcpt: str) -> str:
        """The next hop for a recipient: its hosted domain's, else (DSNs) dsn_relay or MX."""
        domain = normalise_domain(rcpt.rpartition("@")[2])
        hosted = self.hosted.get(domain)
        if hosted is not None:
            return hosted.next_hop
        return self.settings.dsn_relay or f"mx:{domain}"

    async def hosts(self, hop: str) -> list[tuple[str, int]]:
        """The hosts to try for a hop, in order; HopError when the domain takes no mail or
        its MX cannot be looked up."""
        if not hop.startswith("mx:"):
            return [parse_endpoint(hop)]
        domain = hop[3:]
        try:
            answer = await dns.asyncresolver.resolve(domain, "MX",
                                                     lifetime=self.settings.connect_timeout)
        except dns.resolver.NXDOMAIN:
            raise HopError(f"550 5.1.2 domain {domain} does not exist", permanent=True) from None
        except dns.resolver.NoAnswer:
            return [(domain, 25)]  # RFC 5321 5.1: no MX, the domain itself
        except dns.exception.DNSException as e:
            raise HopError(f"451 4.4.3 MX lookup for {domain} failed: {e}") from None
        records = sorted(answer, key=lambda r: r.preference)  # type: ignore[attr-defined]
        hosts = [r.exchange.to_text(omit_final_dot=True) for r in records]  # type: ignore[attr-defined]
        if hosts in ([""], ["."]):
            raise HopError(f"556 5.1.10 domain {domain} accepts no mail (null MX)",
                           permanent=True)
        return [(h, 25) for h in hosts if h not in ("", ".")]
