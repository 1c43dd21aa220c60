"""Configuration: one TOML file, validated by pydantic so a mistake names its key.

Each TOML section has its own module named after it (`[limits]` in limits.py); this one
composes them into Config and loads the file."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from pydantic import Field, ValidationError, model_validator

from filters.address import normalise_domain
from relay.config.attachments import AttachmentsConfig
from relay.config.auth import AuthConfig
from relay.config.blocklist import BlocklistConfig
from relay.config.clamav import ClamAVConfig
from relay.config.delivery import DeliveryConfig
from relay.config.dnsbl import DnsblConfig
from relay.config.domains import DomainConfig
from relay.config.firewall import FirewallConfig
from relay.config.greylist import GreylistConfig
from relay.config.limits import LimitsConfig
from relay.config.metrics import MetricsConfig
from relay.config.policy import PolicyConfig
from relay.config.relay import RelayConfig
from relay.config.retention import RetentionConfig
from relay.config.scoring import ScoringConfig
from relay.config.spamassassin import SpamAssassinConfig
from relay.config.store import StoreConfig
from relay.config.types import Strict
from relay.config.web import WebConfig

__all__ = ["Config", "ConfigError", "config_path", "load_config"]

DEFAULT_CONFIG = "floodgate.toml"
CONFIG_ENV = "FLOODGATE_CONFIG"


class Config(Strict):
    relay: RelayConfig = RelayConfig()
    store: StoreConfig = StoreConfig()
    domains: dict[str, DomainConfig] = Field(min_length=1)
    scoring: ScoringConfig = ScoringConfig()
    policy: PolicyConfig = PolicyConfig()
    dnsbl: DnsblConfig = DnsblConfig()
    attachments: AttachmentsConfig | None = None
    clamav: ClamAVConfig | None = None
    spamassassin: SpamAssassinConfig | None = None
    blocklist: BlocklistConfig = BlocklistConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    firewall: FirewallConfig = FirewallConfig()
    metrics: MetricsConfig = MetricsConfig()
    retention: RetentionConfig = RetentionConfig()
    limits: LimitsConfig = LimitsConfig()
    web: WebConfig = WebConfig()
    greylist: GreylistConfig = GreylistConfig()
    auth: AuthConfig = AuthConfig()

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
        per_domain = {"policy": self.policy.domains, "auth": self.auth.domains,
                      "attachments": self.attachments.domains if self.attachments else {}}
        for section, names in per_domain.items():
            for name in names:
                if name not in seen:
                    raise ValueError(f"{section}.domains.{name!r}: not a hosted domain")
        return self

    def hosted(self) -> dict[str, DomainConfig]:
        """Hosted domains keyed by their normalised (lower-case, A-label) form."""
        return {normalise_domain(k): v for k, v in self.domains.items()}

    def observed(self) -> frozenset[str]:
        """Hosted domains in observe mode ([policy]), normalised."""
        return self.policy.observed(list(self.hosted()))

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
        if item == "[key]":  # pydantic's mark of a dict key that failed: the key names it
            continue
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
    return _resolve_paths(config, Path(path).resolve().parent)


def state_dir(config: Config, config_dir: Path) -> Path:
    """Where the relative paths of what Floodgate writes go: `relay.state_dir`, else
    $STATE_DIRECTORY (systemd's StateDirectory=, /var/lib/floodgate; its first entry), else
    the configuration file's directory. Not the configuration's directory when it can be
    helped: that is /etc, read-only to the service (ProtectSystem=strict) and no place for a
    spool or a database."""
    chosen = config.relay.state_dir
    if chosen is None:
        from_systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        chosen = Path(from_systemd) if from_systemd else config_dir
    return chosen if chosen.is_absolute() else config_dir / chosen


def _resolve_paths(config: Config, config_dir: Path) -> Config:
    """Relative paths are relative to where they belong, so the relay runs from any
    directory: what it reads (the TLS files) to the configuration file, what it writes to
    the state directory (`state_dir`)."""
    base = state_dir(config, config_dir)
    relay = config.relay
    spool = relay.spool_dir if relay.spool_dir.is_absolute() else base / relay.spool_dir
    tls = relay.tls
    if tls is not None:
        tls = tls.model_copy(
            update={
                "cert": tls.cert if tls.cert.is_absolute() else config_dir / tls.cert,
                "key": tls.key if tls.key.is_absolute() else config_dir / tls.key,
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
            "relay": relay.model_copy(
                update={"spool_dir": spool, "tls": tls, "state_dir": base}),
            "store": config.store.model_copy(update={"url": url}),
        }
    )
