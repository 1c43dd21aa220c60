"""[clamav] and [spamassassin] sections: validation, and the filters built from them."""

from __future__ import annotations

import tomllib

import pytest
from pydantic import ValidationError

from filters.base import Action, Stage
from filters.clamav import ClamAVFilter
from filters.spamassassin import SpamAssassinFilter, Thresholds
from relay.config.clamav import ClamAVConfig
from relay.config.spamassassin import SpamAssassinConfig
from relay.service.scanners import build_scanners

TOML = """
[clamav]
address = "/run/clamav/clamd.ctl"
timeout = "20s"
on_error = "accept"
max_size = 1048576
on_oversize = "tempfail"
concurrency = 4
cache = { max_entries = 500, infected_ttl = "2h", clean_ttl = "5m" }

[spamassassin]
address = "127.0.0.1:7830"
tag_score = 4.0
reject_score = 8.0
[spamassassin.domains."Example.ORG"]
tag_score = 2.0
reject_score = 5.0
"""


def test_sections_parse_and_build() -> None:
    data = tomllib.loads(TOML)
    clam = ClamAVConfig.model_validate(data["clamav"])
    spam = SpamAssassinConfig.model_validate(data["spamassassin"])
    assert clam.timeout == 20.0 and clam.cache.infected_ttl == 7200.0
    assert spam.domains["example.org"].reject_score == 5.0
    c, s = build_scanners(clam, spam)
    assert isinstance(c, ClamAVFilter) and isinstance(s, SpamAssassinFilter)
    assert c.stage == s.stage == Stage.DATA
    assert c.on_error.action == Action.ACCEPT and c.on_oversize == "tempfail"
    assert c.max_size == 1048576
    assert c.client.endpoint == "/run/clamav/clamd.ctl" and c.client.timeout == 20.0
    assert c.cache is not None and c.cache.max_entries == 500 and c.clean_ttl == 300.0
    assert s.on_error.action == Action.TEMPFAIL and s.defaults == Thresholds(4.0, 8.0)
    assert s.thresholds(["a@mail.example.org"]) == Thresholds(2.0, 5.0)


def test_defaults() -> None:
    c, s = build_scanners(ClamAVConfig(), SpamAssassinConfig())
    assert c.client.endpoint == ("127.0.0.1", 3310) and c.on_error.action == Action.TEMPFAIL
    assert s.address == "127.0.0.1:783" and s.defaults == Thresholds(5.0, 10.0)
    # clamd's own MaxFileSize and MaxScanSize defaults (ClamAV 1.x)
    assert (c.max_file_size, c.max_scan_size) == (104_857_600, 419_430_400)
    assert build_scanners(None, SpamAssassinConfig(enabled=False)) == []


@pytest.mark.parametrize(("section", "data", "key"), [
    (ClamAVConfig, {"adress": "x:1"}, "adress"),
    (ClamAVConfig, {"address": "localhost"}, "address"),
    (ClamAVConfig, {"on_error": "reject"}, "on_error"),
    (ClamAVConfig, {"timeout": "soon"}, "timeout"),
    (ClamAVConfig, {"cache": {"ttl": 5}}, "ttl"),
    (ClamAVConfig, {"max_file_size": "100MB"}, "max_file_size"),
    (ClamAVConfig, {"max_scan_size": -1}, "max_scan_size"),
    (SpamAssassinConfig, {"tag_score": 9, "reject_score": 5}, "reject_score"),
    (SpamAssassinConfig, {"domains": {"a.test": {"tag_score": 1}}}, "reject_score"),
])
def test_mistakes_name_their_key(section: type, data: dict, key: str) -> None:
    with pytest.raises(ValidationError) as e:
        section.model_validate(data)
    assert key in str(e.value)


def test_clamd_sizes_are_read_as_clamd_reads_them() -> None:
    """Copied from clamd.conf as they are: 1M = 1048576, 1K = 1024."""
    c = ClamAVConfig.model_validate({"max_file_size": "25M", "max_scan_size": "512k"})
    assert (c.max_file_size, c.max_scan_size) == (25 << 20, 512 << 10)
    f = build_scanners(ClamAVConfig(max_file_size=0, max_scan_size=1000), None)[0]
    assert isinstance(f, ClamAVFilter) and (f.max_file_size, f.max_scan_size) == (0, 1000)
