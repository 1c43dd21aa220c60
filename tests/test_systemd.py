"""The systemd units as shipped (scripts/systemd/), and the state directory they rely on.

`systemd-analyze verify` checks each unit; it also wants every Exec binary to exist, so the
test verifies a copy with /opt/floodgate/.venv/bin/floodgate (the path the units ship with,
README "Running under systemd") replaced by this interpreter's `floodgate`, and nothing
else changed. The state directory: a relay whose configuration sits in a directory it must
not write to (/etc) keeps its spool and database in $STATE_DIRECTORY."""

from __future__ import annotations

import os
import re
import smtplib
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, RelayProcess, floodgate, free_port, write_config

UNITS = ROOT / "scripts" / "systemd"
SHIPPED_BINARY = "/opt/floodgate/.venv/bin/floodgate"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"


def directives(unit: Path) -> list[tuple[str, str]]:
    """(key, value) of every directive, in order (a key may repeat)."""
    out = []
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def values(unit: Path, key: str) -> list[str]:
    return [v for k, v in directives(unit) if k == key]


@pytest.mark.parametrize("name", ["floodgate-serve.service", "floodgate-web.service",
                                  "floodgate-blocklist.service"])
def test_unit_verifies(name: str, tmp_path: Path) -> None:
    unit = UNITS / name
    text = unit.read_text()
    assert SHIPPED_BINARY in text
    binary = Path(sys.executable).parent / "floodgate"
    assert os.access(binary, os.X_OK), binary
    (tmp_path / name).write_text(text.replace(SHIPPED_BINARY, str(binary)))
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(tmp_path / name)],
                          capture_output=True, text=True, timeout=120)
    # a warning (an unknown directive, a bad value) is as much a mistake as an error
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, ""), proc.stdout + proc.stderr


def test_serve_never_migrates_and_reloads_on_hup() -> None:
    unit = UNITS / "floodgate-serve.service"
    commands = [v for k, v in directives(unit) if k.startswith("Exec")]
    assert not any("db" in c.split() for c in commands), commands  # an operator step
    assert values(unit, "ExecStart") == [f"{SHIPPED_BINARY} serve"]
    assert values(unit, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert values(unit, "StateDirectory") == ["floodgate"]


def test_web_unit_runs_the_console() -> None:
    unit = UNITS / "floodgate-web.service"
    assert values(unit, "ExecStart") == [f"{SHIPPED_BINARY} web"]
    assert values(unit, "User") == ["floodgate"]
    assert values(unit, "CapabilityBoundingSet") == [""]  # none at all


def test_blocklist_unit_applies_again_after_nftables() -> None:
    """Debian's nftables.conf starts with `flush ruleset`: whenever nftables.service starts,
    restarts or reloads, our table is gone and must be loaded again."""
    unit = UNITS / "floodgate-blocklist.service"
    assert "nftables.service" in " ".join(values(unit, "After")).split()
    assert values(unit, "PartOf") == ["nftables.service"]  # its restart restarts us
    assert values(unit, "ReloadPropagatedFrom") == ["nftables.service"]
    assert values(unit, "ExecReload") == [f"{SHIPPED_BINARY} blocklist apply"]
    assert "nftables.service" in " ".join(values(unit, "WantedBy")).split()
    assert values(unit, "ExecStart") == [f"{SHIPPED_BINARY} blocklist watch --apply"]
    assert set(" ".join(values(unit, "AmbientCapabilities")).split()) == {
        "CAP_NET_ADMIN", "CAP_NET_RAW"}


def test_relative_paths_land_in_the_state_directory(tmp_path: Path) -> None:
    """/etc/floodgate/floodgate.toml under StateDirectory=floodgate: the spool and the SQLite
    store go to $STATE_DIRECTORY, nothing is written next to the configuration."""
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    state.mkdir()
    port = free_port()
    config = write_config(etc / "relay.toml", store_url="sqlite:///var/floodgate.db", port=port)
    log = config.with_suffix(".log")
    log.touch()  # the test's capture of stderr, not the relay's doing
    etc.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH
              | stat.S_IXOTH)  # 0555, as ProtectSystem=strict makes /etc (root ignores it)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STATE_DIRECTORY": str(state)}
    relay = RelayProcess(config, port, env=env)
    try:
        relay.start()
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail("s@sender.test", ["anyone@catchall.test"],
                          b"Subject: hi\r\n\r\nHello.\r\n")
    finally:
        assert relay.stop() == 0
        etc.chmod(0o755)
    assert sorted(p.name for p in etc.iterdir()) == ["relay.log", "relay.toml"]
    assert (state / "var" / "floodgate.db").is_file()
    assert len(list((state / "spool-relay" / "queue").glob("*.msg"))) == 1


def test_state_dir_key_wins_for_commands_run_from_a_shell(tmp_path: Path) -> None:
    """`relay.state_dir` in the file: `floodgate` run by hand (no $STATE_DIRECTORY) finds the
    database the service uses."""
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    config = write_config(etc / "floodgate.toml", store_url="sqlite:///var/floodgate.db",
                          port=free_port(), extra_relay=f'state_dir = "{state}"')
    floodgate(config, "aliases", "add", "alice@example.org")
    assert (state / "var" / "floodgate.db").is_file()
    assert sorted(p.name for p in etc.iterdir()) == ["floodgate.toml"]
    listed = floodgate(config, "aliases", "list").stdout
    assert re.search(r"alice@example\.org", listed), listed
