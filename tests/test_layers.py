"""The dependency direction drawn in the README's design section, checked by import-linter
(contracts in pyproject.toml): layers only import downward, filters never import relay or
each other, and no two sibling modules or packages import each other."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

LINT = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run([*LINT, str(cwd / "pyproject.toml")], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)


def test_the_code_keeps_every_contract() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken." in done.stdout


def copy_of_code(tmp_path: Path) -> Path:
    for name in ("relay", "filters", "blocklist"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    root = copy_of_code(tmp_path)
    store = root / "relay" / "store" / "database.py"
    store.write_text(store.read_text() + "\nfrom relay.smtp import replies  # noqa\n")
    done = lint(root)
    assert done.returncode == 1
    assert "relay.store.database -> relay.smtp.replies" in done.stdout


def test_a_cycle_between_siblings_is_found(tmp_path: Path) -> None:
    root = copy_of_code(tmp_path)
    spool = root / "relay" / "delivery" / "dsn.py"
    spool.write_text(spool.read_text() + "\nfrom relay.delivery import service  # noqa\n")
    done = lint(root)
    assert done.returncode == 1
    assert "No cycles are allowed in relay.delivery" in done.stdout
