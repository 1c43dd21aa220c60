"""What is installed: the versions `floodgate --version` prints and `floodgate_build_info`
exports, from the installed distributions' metadata (what pip put in this environment, not
what a source tree says)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def installed(distribution: str) -> str | None:
    """The installed version of `distribution`, or None when it is not installed."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
