"""Configuration: the documented example works; every mistake names its key."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from relay.config import ConfigError, load_config
from relay.config.types import parse_duration
from tests.support import FLOODGATE, ROOT

EXAMPLE = '''
[relay]
node = "relay1"                  # recorded with every event
hostname = "mx1.example.net"     # banner and EHLO name
listen = ["127.0.0.1:2525"]      # IPv6 "[::1]:2525" too
max_message_size = 26214400
max_recipients = 100
spool_dir = "var/spool"

[store]
url = "sqlite:///var/floodgate.db"   # or postgresql+psycopg://...

[domains."example.org"]
next_hop = "127.0.0.1:2600"
[domains."example.net"]
next_hop = "127.0.0.1:2600"
catch_all = false
'''


def check(path: Path, env: dict[str, str] | None = None,
          *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLOODGATE, *args, "check-config"], capture_output=True, text=True,
                          cwd=path.parent, env={**os.environ, **(env or {})},
                          timeout=60)


def test_issue_example_works_as_written(tmp_path: Path) -> None:
    path = tmp_path / "floodgate.toml"
    path.write_text(EXAMPLE)
    config = load_config(str(path))
    assert config.relay.node == "relay1"
    assert config.relay.endpoints() == [("127.0.0.1", 2525)]
    assert config.relay.spool_dir == tmp_path / "var/spool"
    assert config.store.url == f"sqlite:///{tmp_path}/var/floodgate.db"
    assert set(config.hosted()) == {"example.org", "example.net"}
    # default file name in the current directory, and -c and FLOODGATE_CONFIG
    proc = check(path)
    assert (proc.returncode, proc.stdout) == (0, "ok\n")
    other = tmp_path / "other.toml"
    other.write_text(EXAMPLE)
    path.unlink()
    assert check(other, None, "-c", str(other)).stdout == "ok\n"
    assert check(other, {"FLOODGATE_CONFIG": str(other)}).stdout == "ok\n"
    missing = check(other)
    assert missing.returncode == 2
    assert "floodgate.toml: file not found" in missing.stderr


@pytest.mark.parametrize(("change", "expected"), [
    (("max_recipients = 100", "max_recipients = \"many\""),
     "relay.max_recipients: Input should be a valid integer"),
    (("max_recipients = 100", "max_recipients = 100\nmax_recipeints = 5"),
     "relay.max_recipeints: unknown key"),
    (('next_hop = "127.0.0.1:2600"\ncatch_all', 'next_hop = "nowhere"\ncatch_all'),
     'domains."example.net".next_hop: expected "host:port"'),
    (("catch_all = false", "catch_all = false\nnexthop = \"x\""),
     'domains."example.net".nexthop: unknown key'),
    (('listen = ["127.0.0.1:2525"]', 'listen = ["127.0.0.1:99999"]'),
     "relay.listen: port 99999 is out of range"),
    (('url = "sqlite:///var/floodgate.db"', 'url = "mysql://x"'), "store.url: expected sqlite"),
    (("[store]", "[stroe]"), "stroe: unknown key"),
    # a misspelt weight would weigh nothing: weights are keyed by event reason
    (("catch_all = false", "catch_all = false\n[scoring.weights]\nunknwn_rcpt = 3"),
     "scoring.weights.unknwn_rcpt: unknown key: not an event reason (did you mean "
     "'unknown_rcpt'?)"),
    # two spellings of one domain: one rule would silently replace the other
    (("catch_all = false", 'catch_all = false\n[spamassassin]\n'
      '[spamassassin.domains."bücher.example"]\ntag_score = 3\nreject_score = 6\n'
      '[spamassassin.domains."XN--BCHER-KVA.example."]\ntag_score = 4\nreject_score = 8'),
     "spamassassin.domains: 'XN--BCHER-KVA.example.': same domain as 'bücher.example'"),
    (("catch_all = false", 'catch_all = false\n[attachments]\n'
      '[attachments.domains."example.org"]\nbanned_extensions = ["exe"]\n'
      '[attachments.domains."EXAMPLE.org."]\nbanned_extensions = []'),
     "attachments.domains: 'EXAMPLE.org.': same domain as 'example.org'"),
    (("catch_all = false", 'catch_all = false\n[auth.domains]\n"nowhere.example" = "tag"'),
     "(top level): auth.domains.'nowhere.example': not a hosted domain"),
])
def test_mistakes_name_their_key(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    path = tmp_path / "floodgate.toml"
    assert change[0] in EXAMPLE
    path.write_text(EXAMPLE.replace(change[0], change[1], 1))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
    proc = check(path)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_problem_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "floodgate.toml"
    path.write_text(EXAMPLE.replace("max_recipients = 100", "max_recipients = 0\ncolour = 1"))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert len(info.value.problems) == 2


def test_broken_toml_and_no_domains(tmp_path: Path) -> None:
    path = tmp_path / "floodgate.toml"
    path.write_text("[relay\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(path))
    path.write_text("[relay]\nnode = \"x\"\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems == ["domains: required key is missing"]


def test_durations() -> None:
    assert parse_duration("24h") == 86400
    assert parse_duration("1.5s") == 1.5
    assert parse_duration(30) == 30
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_demo_config_is_valid() -> None:
    assert load_config(str(ROOT / "fixtures" / "demo.toml")).relay.recipient_delimiter == "+"
