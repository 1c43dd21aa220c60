"""poll_every, the one store-polling loop (snapshots, scoring, retention), against a real
SQLite store that goes away and comes back."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from relay.store.database import make_engine
from relay.store.polling import poll_every


def test_an_outage_is_logged_once_and_the_loop_keeps_going(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    path = tmp_path / "store" / "floodgate.db"
    engine = make_engine(f"sqlite:///{path}")
    path.parent.rmdir()  # the store is unreachable until the fourth run brings it back
    runs: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sixth = asyncio.Event()

        def step() -> None:  # a plain function: runs on a store thread
            runs.append("run")
            if len(runs) == 4:
                path.parent.mkdir()
            if len(runs) == 6:
                loop.call_soon_threadsafe(sixth.set)
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")

        task = asyncio.create_task(poll_every(0, step, logger="floodgate.test",
                                              failed="cannot poll", recovered="polling again"))
        await sixth.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.INFO, logger="floodgate.test"):
        asyncio.run(main())
    engine.dispose()
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "floodgate.test"]
    assert said == [("ERROR", "cannot poll error=\"unable to open database file\""),
                    ("WARNING", "polling again")]
    assert len(runs) >= 6
