"""The never-block rules, in one place: may this network be blocked, and if not, why.

The scorer asks before it makes a block, the connect gate per client, `block add` from the
CLI and the API before they write one, and the firewall export carves the same networks out
of every rule set. One set of rules, so a network the relay lets in is never dropped by the
kernel, and one the operator cannot block is never blocked by the scorer either.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from relay.config import Config

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK = ("127.0.0.0/8", "::1/128")
OWN = "one of the relay's own listen addresses"


@dataclass(frozen=True, slots=True)
class Rule:
    network: IPNetwork
    why: str
    # Allowlisted networks refuse a wider block too (an operator who allowlists a partner
    # cannot block its /16 by mistake); the rest refuse only blocks inside them, and the
    # gate and the export carve them out of wider blocks.
    wide: bool = False


def listen_addresses(hosts: Iterable[str]) -> list[str]:
    """The relay's own addresses from its listen hosts: `localhost` is both loopbacks;
    wildcards (`*`, 0.0.0.0, ::) and names name no single address and add nothing."""
    out: list[str] = []
    for host in hosts:
        if host == "localhost":
            out += ["127.0.0.1", "::1"]
            continue
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if not ip.is_unspecified:
            out.append(str(ip))
    return out


@dataclass(frozen=True, slots=True)
class Protection:
    """Networks that are scored and reported but never blocked, each with the reason why."""

    rules: tuple[Rule, ...]
    _remembered: Callable[[str], str | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Asked on every connection: in a flood, parsing the address and matching it each
        # time was 2% of the event loop's time (scripts/bench scenario 1).
        object.__setattr__(self, "_remembered", lru_cache(maxsize=65_536)(self._why))

    @classmethod
    def build(cls, allow: Iterable[str], listen_hosts: Iterable[str], loopback: bool,
              never_block: Iterable[str] = ()) -> Protection:
        """Own addresses first, then loopback, the allowlist and `firewall.never_block`:
        the first rule that matches gives the reason."""
        rules = [Rule(_net(a), OWN) for a in listen_addresses(listen_hosts)]
        if loopback:
            rules += [Rule(_net(n), "loopback") for n in LOOPBACK]
        protection = cls(tuple(rules)).with_allow(allow)
        extra = tuple(Rule(n, f"firewall.never_block ({n})") for n in map(_net, never_block))
        return cls(protection.rules + extra)

    @classmethod
    def of_config(cls, config: Config) -> Protection:
        """Everything the configuration protects; the store's allowlist comes on top
        (`with_allow`), read by each user at its own pace."""
        return cls.build(config.blocklist.allow, [h for h, _ in config.relay.endpoints()],
                         config.blocklist.protect_loopback, config.firewall.never_block)

    def with_allow(self, extra: Iterable[str]) -> Protection:
        added = tuple(Rule(n, f"allowlisted ({n})", wide=True) for n in map(_net, extra))
        return Protection(self.rules + added)

    def why(self, host: str) -> str | None:
        """None when `host` (an address or network) may be blocked, else the reason."""
        return self._remembered(host)

    def _why(self, host: str) -> str | None:
        try:
            net = _net(host)
        except ValueError:
            return None
        for rule in self.rules:
            if net.version != rule.network.version:
                continue
            if net.subnet_of(rule.network) or (  # type: ignore[arg-type]
                    rule.wide and rule.network.subnet_of(net)):  # type: ignore[arg-type]
                return rule.why
        return None

    def networks(self) -> list[str]:
        """Every protected network, as the firewall export carves them out."""
        return sorted({_text(r.network) for r in self.rules})


def _net(text: str) -> IPNetwork:
    """An address or network; an IPv4-mapped IPv6 address is the IPv4 address it is."""
    net = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen == 128:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(mapped)
    return net


def _text(net: IPNetwork) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
