"""Which host an address belongs to, for counting and blocking."""

from __future__ import annotations

import ipaddress
from functools import lru_cache


@lru_cache(maxsize=65_536)
def host_key(client: str, ipv6_prefix: int = 64) -> str:
    """IPv4 hosts count one by one; IPv6 hosts by their prefix (a /64 is one customer).

    IPv4-mapped IPv6 addresses count as the IPv4 host they are.
    """
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        net = ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False)
        return str(net)
    return str(ip)
