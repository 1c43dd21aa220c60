"""`[store]`: the database every relay of a cluster shares, and how events reach it."""

from __future__ import annotations

import re
from importlib.util import find_spec

from pydantic import Field, field_validator

from relay.config.types import Duration, Strict


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
        # psycopg is an optional extra (a SQLite install does without it): say so here, at
        # check-config and start-up, rather than as an ImportError from the first query
        if v.startswith("postgresql") and find_spec("psycopg") is None:
            raise ValueError("a postgresql:// store needs the postgresql extra: "
                             "pip install 'floodgate[postgresql]'")
        return v
