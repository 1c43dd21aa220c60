"""`[clamav]`: the clamd daemons that scan for viruses, and what a failure or a message past
their limits gets."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator

from filters.clamav import MAX_FILE_SIZE, MAX_SCAN_SIZE
from relay.config.types import Duration, OnError, OnOversize, Strict, scanner_address

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


class ClamAVCacheConfig(Strict):
    """Outbreak mode: verdicts by digest of each decoded MIME leaf."""

    enabled: bool = True
    max_entries: int = Field(
        default=100_000, gt=0,
        description=(
            "most verdicts kept; the least recently used go first"
        ))
    infected_ttl: Duration = Field(default=3600.0,
                                   description="how long an infected verdict is kept")
    clean_ttl: Duration = 600.0
    # How often clamd's VERSION (signature database) is asked; a change drops clean entries.
    version_interval: Duration = 30.0


class ClamAVConfig(Strict):
    enabled: bool = Field(
        default=True,
        description=(
            "scan DATA with clamd; `false` keeps the section but scans nothing"
        ))
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
        return scanner_address(v)
