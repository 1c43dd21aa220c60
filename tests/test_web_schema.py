"""The web API's contract: the migration builds exactly its tables, and schemathesis, driving
the live server from its own OpenAPI schema with an admin token, finds no server error."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from relay.store.database import _alembic_config, head_revision, make_engine, upgrade
from relay.store.schema import metadata
from tests.web_support import ADMIN, relay_extra, web_starter

EXAMPLES = 25  # per operation and mode: 14 operations, well under a minute in all


@pytest.fixture
def start_web():  # type: ignore[no-untyped-def]
    yield from web_starter()


def test_migration_0004_adds_the_web_tables_and_goes_back(store_url: str) -> None:
    engine = make_engine(store_url)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
    assert upgrade(engine) == ("0003", head_revision())
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    assert upgrade(engine) == ("0003", head_revision())
    engine.dispose()


def test_openapi_schema_fuzzing_finds_no_server_errors(start_relay, start_web,
                                                       sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, extra=relay_extra())
    web = start_web(relay.config)
    schema = schemathesis.openapi.from_url(f"{web.url}/openapi.json")
    auth = {"Authorization": f"Bearer {ADMIN}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    seen: Counter[int] = Counter()
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "GET /api/hosts/{address}", "POST /api/blocks", "DELETE /api/blocks/{network}",
        "POST /api/allow", "GET /api/reports/timeline", "GET /blocklist.txt"}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case) -> None:  # type: ignore[no-untyped-def]
                response = case.call_and_validate(base_url=web.url, headers=auth,
                                                  checks=[not_a_server_error])
                seen[response.status_code] += 1

            fuzz()
    assert "Traceback" not in web.log()
    assert sum(seen.values()) > 10 * len(operations), seen
    assert {200, 422} <= set(seen), seen  # refused bad input, and got past validation too
