"""`[clamav]` and `[spamassassin]` configuration, and building the content filters from it.

Kept apart from relay/config/__init__.py so the scanners can be configured and built (by the relay,
`floodgate scan`, the demo, the tests) without the rest of the relay's configuration.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from filters.address import normalise_domain
from filters.base import Action, Context, Filter, Verdict
from filters.clamav import (
    MAX_FILE_SIZE,
    MAX_SCAN_SIZE,
    ClamAVFilter,
    ClamdClient,
    ClamdPool,
    parse_address,
)
from filters.verdict_cache import VerdictCache
from relay.config.types import Duration

if TYPE_CHECKING:  # aiospamc is loaded only when a [spamassassin] filter is built
    from filters.spamassassin import SpamAssassinFilter

OnError = Literal["tempfail", "accept"]
OnOversize = Literal["tempfail", "accept", "reject"]

_CLAMD_SIZE = re.compile(r"(\d+)([KkMm]?)")


def parse_clamd_size(value: object) -> object:
    """Bytes, or clamd.conf's own notation ("100M", "512K": 1M = 1048576), so a value can be
    copied from clamd.conf as it is."""
    if isinstance(value, str):
        m = _CLAMD_SIZE.fullmatch(value.strip())
        if m is None:
            raise ValueError(f'expected bytes or a clamd.conf size ("100M", "512K"), '
                             f"got {value!r}")
        return int(m.group(1)) << {"": 0, "k": 10, "m": 20}[m.group(2).lower()]
    return value


ClamdSize = Annotated[int, BeforeValidator(parse_clamd_size), Field(ge=0)]


def _address(v: str | list[str]) -> str | list[str]:
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


def _addresses(v: str | list[str]) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClamAVCacheConfig(_Strict):
    """Outbreak mode: verdicts by digest of each decoded MIME leaf."""

    enabled: bool = True
    max_entries: int = Field(default=100_000, gt=0)
    infected_ttl: Duration = 3600.0
    clean_ttl: Duration = 600.0
    # How often clamd's VERSION (signature database) is asked; a change drops clean entries.
    version_interval: Duration = 30.0


class ClamAVConfig(_Strict):
    enabled: bool = True
    # "host:port", "[v6]:port", a unix socket path, or a list of them (used in turn)
    address: str | list[str] = "127.0.0.1:3310"
    timeout: Duration = 30.0
    on_error: OnError = "tempfail"
    # Bytes; 0 = let clamd decide. Set to clamd's StreamMaxLength to refuse without a trip.
    max_size: int = Field(default=26_214_400, ge=0)
    on_oversize: OnOversize = "reject"
    # Past clamd's MaxRecursion/MaxScanSize/MaxFileSize (needs `AlertExceedsMax yes`).
    on_limits: OnOversize = "reject"
    # clamd.conf's MaxFileSize and MaxScanSize (ClamAV 1.x defaults; 0 = no limit): zip
    # members declared past them follow on_limits, as clamd cuts them short in silence.
    max_file_size: ClamdSize = MAX_FILE_SIZE
    max_scan_size: ClamdSize = MAX_SCAN_SIZE
    # In-flight scans; keep at or below clamd's MaxThreads.
    concurrency: int = Field(default=10, gt=0)
    cache: ClamAVCacheConfig = ClamAVCacheConfig()

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str | list[str]) -> str | list[str]:
        return _address(v)


class SpamThresholds(_Strict):
    tag_score: float
    reject_score: float

    @model_validator(mode="after")
    def _order(self) -> SpamThresholds:
        if self.reject_score < self.tag_score:
            raise ValueError("reject_score must not be below tag_score")
        return self


class SpamCacheConfig(_Strict):
    """Scores by digest of the whole message as spamd sees it (headers too: they score)."""

    enabled: bool = True
    max_entries: int = Field(default=50_000, gt=0)
    ttl: Duration = 600.0


class SpamAssassinConfig(SpamThresholds):
    """The global thresholds (checked in order by SpamThresholds) and everything else."""

    enabled: bool = True
    address: str | list[str] = "127.0.0.1:783"  # or a list: used in turn
    timeout: Duration = 30.0
    on_error: OnError = "tempfail"
    tag_score: float = 5.0
    reject_score: float = 10.0
    # [spamassassin.domains."example.org"] tag_score = 3.0, reject_score = 6.0
    # Most specific domain rule wins per recipient; the strictest across recipients.
    domains: dict[str, SpamThresholds] = Field(default_factory=dict)
    max_size: int = Field(default=524_288, ge=0)  # bytes; 0 = no limit
    on_oversize: OnOversize = "accept"
    concurrency: int = Field(default=5, gt=0)  # keep at or below spamd's --max-children
    cache: SpamCacheConfig = SpamCacheConfig()

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str | list[str]) -> str | list[str]:
        return _address(v)

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: dict[str, SpamThresholds]) -> dict[str, SpamThresholds]:
        return {normalise_domain(k): t for k, t in v.items()}  # as filters.spamassassin looks


def _action(on_error: OnError) -> Action:
    return Action.ACCEPT if on_error == "accept" else Action.TEMPFAIL


def _clamd(cfg: ClamAVConfig) -> ClamdClient | ClamdPool:
    """`concurrency` is per clamd: each has its own MaxThreads."""
    clients = [ClamdClient(a, timeout=cfg.timeout, concurrency=cfg.concurrency)
               for a in _addresses(cfg.address)]
    return clients[0] if len(clients) == 1 else ClamdPool(clients)


def build_clamav(cfg: ClamAVConfig) -> ClamAVFilter:
    cache = VerdictCache[str](cfg.cache.max_entries) if cfg.cache.enabled else None
    return ClamAVFilter(
        _clamd(cfg),
        on_error=_action(cfg.on_error), max_size=cfg.max_size, on_oversize=cfg.on_oversize,
        on_limits=cfg.on_limits, max_file_size=cfg.max_file_size,
        max_scan_size=cfg.max_scan_size, cache=cache, infected_ttl=cfg.cache.infected_ttl,
        clean_ttl=cfg.cache.clean_ttl, version_interval=cfg.cache.version_interval,
    )


def build_spamassassin(cfg: SpamAssassinConfig) -> SpamAssassinFilter:
    from filters.spamassassin import SpamAssassinFilter, SpamResult, Thresholds

    cache = VerdictCache[SpamResult](cfg.cache.max_entries) if cfg.cache.enabled else None
    return SpamAssassinFilter(
        cfg.address, timeout=cfg.timeout, on_error=_action(cfg.on_error),
        tag_score=cfg.tag_score, reject_score=cfg.reject_score,
        domains={d: Thresholds(t.tag_score, t.reject_score) for d, t in cfg.domains.items()},
        max_size=cfg.max_size, on_oversize=cfg.on_oversize, concurrency=cfg.concurrency,
        cache=cache, cache_ttl=cfg.cache.ttl,
    )


def build_scanners(clamav_cfg: ClamAVConfig | None,
                   spam_cfg: SpamAssassinConfig | None) -> list[Filter]:
    """DATA-stage filters in cost order: virus (cheap, and refuses outbreaks) before spam.
    Nothing connects here: each scan opens its own connection."""
    filters: list[Filter] = []
    if clamav_cfg is not None and clamav_cfg.enabled:
        filters.append(build_clamav(clamav_cfg))
    if spam_cfg is not None and spam_cfg.enabled:
        filters.append(build_spamassassin(spam_cfg))
    return filters


async def scan_message(filters: list[Filter], content: bytes,
                       rcpts: list[str] | None = None) -> list[tuple[str, Verdict | None]]:
    """For `floodgate scan`: every filter's own verdict on one message (none stops the
    others, unlike the pipeline), so an operator sees each scanner's opinion."""
    ctx = Context(client="127.0.0.1", rcpts=list(rcpts or []), content=content)
    results: list[tuple[str, Verdict | None]] = []
    for f in filters:
        results.append((f.name, await f.check(ctx)))
    return results
