"""The optional extras: charts (matplotlib) and postgresql (psycopg) are left out of a lean
install, and a command that needs one says which extra to install instead of an ImportError.

"Not installed" is played by a child interpreter in which the module cannot be imported
(sys.modules[name] = None), running the CLI as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support import ROOT, free_port, write_config


def without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`floodgate ARGS` in a Python where `module` cannot be imported."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from relay.cli.main import main\nmain(prog_name='floodgate')")
    env = {**os.environ, "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def test_png_without_charts_extra_names_it(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path / "relay.toml", store_url=sqlite_url, port=free_port())
    png = tmp_path / "chart.png"
    result = without("matplotlib", "-c", str(config), "report", "timeline", "--png", str(png))
    assert result.returncode == 1, result.stderr
    assert ("--png needs the charts extra: pip install 'floodgate[charts]'"
            in result.stderr), result.stderr
    assert not png.exists()
    # the table itself needs no extra
    assert without("matplotlib", "-c", str(config), "report", "timeline").returncode == 0


def test_postgresql_store_without_postgresql_extra_names_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "relay.toml", port=free_port(),
                          store_url="postgresql+psycopg://floodgate@127.0.0.1/floodgate")
    result = without("psycopg", "-c", str(config), "check-config")
    assert result.returncode == 2, result.stderr
    assert ("a postgresql:// store needs the postgresql extra: "
            "pip install 'floodgate[postgresql]'" in result.stderr), result.stderr
    # with psycopg there, the same configuration is fine
    assert without("nothing_at_all", "-c", str(config), "check-config").stdout == "ok\n"


def test_runtime_leaves_out_the_extras_and_test_pulls_them_in() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    for heavy in ("matplotlib", "psycopg", "pyclamd", "ldap3"):
        assert heavy not in runtime
    extras = project["optional-dependencies"]
    assert any(d.startswith("matplotlib") for d in extras["charts"])
    assert any(d.startswith("psycopg[binary]") for d in extras["postgresql"])
    assert any(d.startswith("ldap3") for d in extras["ldap"])
    assert "floodgate[charts,postgresql,ldap]" in extras["test"]


def test_ldap_verification_without_ldap_extra_names_it(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path / "relay.toml", store_url=sqlite_url, port=free_port())
    config.write_text(config.read_text()
                      + '\n[domains."example.org".verify]\nldap_url = "ldap://127.0.0.1:1"\n')
    result = without("ldap3", "-c", str(config), "check-config")
    assert result.returncode == 2, result.stderr
    assert "needs the ldap extra: pip install 'floodgate[ldap]'" in result.stderr, result.stderr
    assert without("nothing_at_all", "-c", str(config), "check-config").stdout == "ok\n"
