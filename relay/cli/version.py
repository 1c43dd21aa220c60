"""`floodgate --version`: what is installed, on one line, for a bug report or an upgrade check.

The versions come from the installed distributions' metadata (relay/version.py); aiosmtpd
is named because Floodgate is pinned to one release of it (see pyproject.toml)."""

from __future__ import annotations

import platform

from relay.version import installed


def _installed(distribution: str) -> str:
    return installed(distribution) or "not installed"


def version_line() -> str:
    return (f"floodgate {_installed('floodgate')} (aiosmtpd {_installed('aiosmtpd')}, "
            f"Python {platform.python_version()})")
