"""Value parsers shared by the configuration sections."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: object) -> float:
    """Seconds from `30`, `"30s"`, `"5m"`, `"24h"`, `"7d"`: operators write durations both ways."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, \"30s\", \"5m\" or \"24h\"")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected a duration such as 30, \"30s\", \"5m\" or \"24h\", got {value!r}")


def parse_endpoint(value: str) -> tuple[str, int]:
    """Split `host:port`, `[v6]:port` or `v6-literal` forms; the port is mandatory."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)", value) or re.fullmatch(
        r"([^:\[\]]+):(\d+)", value
    )
    if not m:
        raise ValueError(f"expected \"host:port\" or \"[ipv6]:port\", got {value!r}")
    host, port = m.group(1), int(m.group(2))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1-65535")
    return host, port


def check_networks(values: list[str]) -> list[str]:
    """Every item an address or CIDR network, or a ValueError naming the bad one."""
    import ipaddress

    for net in values:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as e:
            raise ValueError(f"{net!r} is not an address or network") from e
    return values


# Seconds, written as 30, "30s", "5m", "24h" or "7d"; never negative. One type for every
# duration in every section, so each section stops repeating the same validator.
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
