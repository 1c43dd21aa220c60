"""Configuration: one TOML file, validated by pydantic so a mistake names its key."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from filters.address import normalise_domain, split_address
from relay.config.delivery import DeliveryConfig
from relay.config.dnsbl import DnsblConfig
from relay.config.firewall import FirewallConfig
from relay.config.limits import LimitsConfig
from relay.config.metrics import MetricsConfig, RetentionConfig
from relay.config.scanners import ClamAVConfig, SpamAssassinConfig
from relay.config.scoring import BlocklistConfig, ScoringConfig
from relay.config.types import Duration, parse_endpoint
from relay.config.web import WebConfig

DEFAULT_CONFIG = "floodgate.toml"
CONFIG_ENV = "FLOODGATE_CONFIG"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSConfig(Strict):
    cert: Path
    key: Path
    required: bool = False


class RelayConfig(Strict):
    node: str = "relay1"
    hostname: str = "localhost"
    listen: list[str] = Field(default_factory=lambda: ["127.0.0.1:2525"], min_length=1)
    max_message_size: int = Field(default=26_214_400, gt=0)
    max_recipients: int = Field(default=100, gt=0)
    spool_dir: Path = Path("var/spool")
    idle_timeout: Duration = 300.0
    shutdown_grace: Duration = 30.0
    recipient_delimiter: str = ""
    local_part_case: Literal["insensitive", "sensitive"] = "insensitive"
    tls: TLSConfig | None = None
    # Where mail for <postmaster> (RFC 5321 4.5.1: accepted without a domain) and for an
    # unknown postmaster@<hosted domain> goes; "" means postmaster@ the first hosted domain.
    postmaster: str = ""
    # Postfix's hopcount_limit: more Received: lines than this is a mail loop, 554 5.4.6.
    hopcount_limit: int = Field(default=50, ge=1)

    @field_validator("postmaster")
    @classmethod
    def _postmaster(cls, v: str) -> str:
        if v and (split_address(v) is None or any(c <= " " or c == "\x7f" for c in v)):
            raise ValueError(f"{v!r}: a full address, user@domain")
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: list[str]) -> list[str]:
        for item in v:
            host, _ = parse_endpoint(item)
            if host not in ("localhost", "*"):
                try:
                    ipaddress.ip_address(host)
                except ValueError as e:
                    raise ValueError(f"{item!r}: listen on an IP address, not {host!r}") from e
        return v

    @field_validator("recipient_delimiter")
    @classmethod
    def _delim(cls, v: str) -> str:
        if len(v) > 1 or v in ("@", " "):
            raise ValueError("a single character such as \"+\" or \"-\", or \"\" to turn it off")
        return v

    def endpoints(self) -> list[tuple[str, int]]:
        return [parse_endpoint(x) for x in self.listen]


class StoreConfig(Strict):
    url: str = "sqlite:///var/floodgate.db"
    refresh_interval: Duration = 2.0
    event_batch: int = Field(default=20_000, gt=0)  # SQLite: 5000 -> 20000 is +15% events/s
    event_flush_interval: Duration = 0.5
    event_buffer: int = Field(default=100_000, gt=0)
    ipv6_prefix: int = Field(default=64, ge=8, le=128)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", v):
            raise ValueError("expected sqlite:///PATH or postgresql+psycopg://USER@HOST/DB")
        return v


class DomainConfig(Strict):
    next_hop: str
    catch_all: bool = False

    @field_validator("next_hop")
    @classmethod
    def _hop(cls, v: str) -> str:
        if not v.startswith("mx:"):
            parse_endpoint(v)
        return v


class Config(Strict):
    relay: RelayConfig = RelayConfig()
    store: StoreConfig = StoreConfig()
    domains: dict[str, DomainConfig] = Field(min_length=1)
    scoring: ScoringConfig = ScoringConfig()
    dnsbl: DnsblConfig = DnsblConfig()
    clamav: ClamAVConfig | None = None
    spamassassin: SpamAssassinConfig | None = None
    blocklist: BlocklistConfig = BlocklistConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    firewall: FirewallConfig = FirewallConfig()
    metrics: MetricsConfig = MetricsConfig()
    retention: RetentionConfig = RetentionConfig()
    limits: LimitsConfig = LimitsConfig()
    web: WebConfig = WebConfig()

    @model_validator(mode="after")
    def _domains(self) -> Config:
        seen: dict[str, str] = {}
        for name in self.domains:
            key = normalise_domain(name)
            if not key or "." not in key:
                raise ValueError(f"domains.{name!r}: not a domain name")
            if key in seen:
                raise ValueError(f"domains.{name!r}: same domain as {seen[key]!r}")
            seen[key] = name
        return self

    def hosted(self) -> dict[str, DomainConfig]:
        """Hosted domains keyed by their normalised (lower-case, A-label) form."""
        return {normalise_domain(k): v for k, v in self.domains.items()}

    def postmaster(self) -> str:
        """`relay.postmaster`, else postmaster at the first hosted domain."""
        return self.relay.postmaster or f"postmaster@{next(iter(self.hosted()))}"


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` holds one line per mistake."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


def _loc(loc: tuple[object, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif isinstance(item, str) and re.fullmatch(r"[A-Za-z0-9_-]+", item):
            parts.append(("." if parts else "") + item)
        else:
            parts.append(("." if parts else "") + f'"{item}"')
    return "".join(parts) or "(top level)"


def config_path(explicit: str | None) -> str:
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def load_config(path: str) -> Config:
    """Read and validate `path`, raising ConfigError with every problem named by key path."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(path, ["file not found (use -c FILE or set FLOODGATE_CONFIG)"]) from None
    except OSError as e:
        raise ConfigError(path, [f"cannot read: {e.strerror}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [f"not valid TOML: {e}"]) from None
    try:
        config = Config.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required key is missing"
            problems.append(f"{_loc(err['loc'])}: {msg}")
        raise ConfigError(path, problems) from None
    base = Path(path).resolve().parent
    return _resolve_paths(config, base)


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths are relative to the config file, so the relay runs from any directory."""
    relay = config.relay
    spool = relay.spool_dir if relay.spool_dir.is_absolute() else base / relay.spool_dir
    tls = relay.tls
    if tls is not None:
        tls = tls.model_copy(
            update={
                "cert": tls.cert if tls.cert.is_absolute() else base / tls.cert,
                "key": tls.key if tls.key.is_absolute() else base / tls.key,
            }
        )
    url = config.store.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url.removeprefix("sqlite:///")
        if rel and rel != ":memory:":
            url = f"sqlite:///{base / rel}"
    firewall = config.firewall
    if firewall.output is not None and not firewall.output.is_absolute():
        firewall = firewall.model_copy(update={"output": base / firewall.output})
    return config.model_copy(
        update={
            "firewall": firewall,
            "relay": relay.model_copy(update={"spool_dir": spool, "tls": tls}),
            "store": config.store.model_copy(update={"url": url}),
        }
    )
