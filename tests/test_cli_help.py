"""The command line as a newcomer meets it: --version, --help naming every command with its
whole one-line help, and the bash completion the README tells operators to install."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

import click

from relay.cli.main import main
from tests.support import FLOODGATE, ROOT


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLOODGATE, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "80", **(env or {})}, timeout=60,
                          check=True)


def test_version_names_floodgate_aiosmtpd_and_python() -> None:
    assert run("--version").stdout == (
        f"floodgate {version('floodgate')} (aiosmtpd {version('aiosmtpd')}, "
        f"Python {platform.python_version()})\n")


def test_help_lists_every_command_with_its_whole_one_line_help() -> None:
    """Lazy commands too (their modules load only when used), and no summary cut at "...":
    a summary must fit an 80-column terminal."""
    listing = run("--help").stdout.split("Commands:\n", 1)[1]
    rows = dict(line.strip().split(None, 1) for line in listing.splitlines() if line.strip())
    with click.Context(main) as ctx:
        names = main.list_commands(ctx)
        expected = {name: main.get_command(ctx, name).get_short_help_str(limit=1000)  # type: ignore[union-attr]
                    for name in names}
    assert {"serve", "web", "report", "queue", "blocklist", "token"} <= set(names)
    assert rows == expected


def test_bash_completion_script_completes_commands(tmp_path: Path) -> None:
    """The script from `_FLOODGATE_COMPLETE=bash_source floodgate`, sourced in a real bash,
    completes a lazily loaded command and its sub-commands."""
    script = run(env={"_FLOODGATE_COMPLETE": "bash_source"}).stdout
    assert "complete -o nosort -F _floodgate_completion floodgate" in script
    # the completion function runs `floodgate` from PATH: put this tree's CLI there
    shim = tmp_path / "floodgate"
    shim.write_text(f'#!/bin/sh\nexec {" ".join(FLOODGATE)} "$@"\n')
    shim.chmod(0o755)
    (tmp_path / "completion.bash").write_text(script)
    probe = """
        source "$1"
        ask() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()
                     _floodgate_completion floodgate; echo "${COMPREPLY[*]}"; }
        ask floodgate repo
        ask floodgate report ""
    """
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(["bash", "-c", probe, "probe", str(tmp_path / "completion.bash")],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
                            check=True)
    assert result.stdout.splitlines() == ["report", "auth hosts summary timeline"]
