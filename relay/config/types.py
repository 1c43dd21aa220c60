"""The base model and value parsers shared by the configuration sections."""

from __future__ import annotations

import re
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from filters.address import normalise_domain
from filters.endpoints import parse_address

# What a scanner's failure, or a message past its size, gets ([clamav] and [spamassassin]).
OnError = Literal["tempfail", "accept"]
OnOversize = Literal["tempfail", "accept", "reject"]


class Strict(BaseModel):
    """The base of every section: an unknown key is a mistake to report, not to ignore
    (a misspelt key would otherwise keep its default in silence), and a loaded config is
    never changed in place."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: object) -> int:
    """Bytes from `1048576`, `"512k"`, `"100MB"`, `"2GiB"` (binary multiples either way)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1048576, \"100MB\" or \"2GB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _FACTORS[m.group(2).lower()])
    raise ValueError(f"expected a size such as 1048576, \"100MB\" or \"2GB\", got {value!r}")


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


def scanner_address(v: str | list[str]) -> str | list[str]:
    """One address, or a list of them: scanners used in turn, skipped while down."""
    items = [v] if isinstance(v, str) else v
    if not items:
        raise ValueError("at least one address")
    for item in items:
        try:
            parse_address(item)
        except ValueError as e:
            raise ValueError(str(e)) from None
    return v


# Seconds, written as 30, "30s", "5m", "24h" or "7d"; never negative. One type for every
# duration in every section, so each section stops repeating the same validator.
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


T = TypeVar("T")


def per_domain(v: dict[str, T]) -> dict[str, T]:
    """A `[section.domains]` table keyed by normalised domain (lower case, A-label); two
    spellings of one domain are refused, not silently merged. Config checks that each is
    a hosted domain."""
    out: dict[str, T] = {}
    seen: dict[str, str] = {}
    for name, value in v.items():
        key = normalise_domain(name)
        if key in seen:
            raise ValueError(f"{name!r}: same domain as {seen[key]!r}")
        seen[key], out[key] = name, value
    return out
