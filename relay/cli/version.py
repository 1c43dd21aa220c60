"""`floodgate --version`: what is installed, on one line, for a bug report or an upgrade check.

The versions come from the installed distributions' metadata, so the line tells what pip put
in this environment, not what a source tree says; aiosmtpd is named because Floodgate is
pinned to one release of it (see pyproject.toml)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version


def _installed(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def version_line() -> str:
    return (f"floodgate {_installed('floodgate')} (aiosmtpd {_installed('aiosmtpd')}, "
            f"Python {platform.python_version()})")
