"""pytest fixtures for the real scanners: import them into a test module with
`from tests.scanner_fixtures import clamd, spamd  # noqa: F401` (or list this module in
`pytest_plugins`). One clamd and one spamd serve the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import Clamd, Spamd, run_clamd, run_spamd


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    with run_clamd(tmp_path_factory.mktemp("clamd")) as server:
        yield server


@pytest.fixture(scope="session")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spamd]:
    with run_spamd(tmp_path_factory.mktemp("spamd")) as server:
        yield server


@pytest.fixture
def own_clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    """A clamd of the test's own, for tests that stop it or count its scans."""
    with run_clamd(tmp_path_factory.mktemp("own-clamd")) as server:
        yield server
