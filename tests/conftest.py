"""Shared fixtures: stores on SQLite and on a real PostgreSQL cluster, and running relays."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import PostgresCluster, RelayProcess, free_port, write_config


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/floodgate.db"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/floodgate.db"


RelayFactory = Callable[..., RelayProcess]


@pytest.fixture
def start_relay(tmp_path: Path) -> Iterator[RelayFactory]:
    """Start relays with a generated config; all are stopped at the end of the test."""
    started: list[RelayProcess] = []

    def start(store_url: str, name: str = "relay", wait: bool = True, aliases: str = "",
              **config: object) -> RelayProcess:
        port = int(config.pop("port", 0)) or free_port()
        path = write_config(tmp_path / f"{name}.toml", store_url=store_url, port=port,
                            **config)  # type: ignore[arg-type]
        if aliases:
            from tests.support import floodgate

            (tmp_path / f"{name}-aliases.txt").write_text(aliases)
            floodgate(path, "aliases", "import", "--format", "list",
                      str(tmp_path / f"{name}-aliases.txt"))
        relay = RelayProcess(path, port)
        started.append(relay)
        return relay.start(wait=wait)

    yield start
    for relay in started:
        if relay.proc is not None and relay.proc.poll() is None:
            relay.proc.kill()
            relay.proc.wait()


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A cluster of the test's own, which it may pause (a store outage) and resume."""
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.stop()
