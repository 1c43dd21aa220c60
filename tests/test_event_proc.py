"""The event writer process, parent side, against children that fail on purpose (a real
child is tested through the relay in test_service.py and everywhere events are counted)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from relay.event_proc import EventProcess, WriterDown
from relay.events import EventRecord, as_row
from relay.models import Event
from relay.store import make_engine, upgrade

ROWS = [as_row(EventRecord(ts=EventRecord.now(), node="t", client="192.0.2.1",
                           host="192.0.2.1", stage="rcpt", action="reject",
                           reason="unknown_rcpt", recipient=f"u{i}@example.org"))
        for i in range(3)]


def child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_real_child_writes_events_and_rollups(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = make_engine(url)
    upgrade(engine)

    async def go() -> None:
        writer = EventProcess(url)
        await writer.write(ROWS)
        await writer.close()

    asyncio.run(go())
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Event)).scalar_one() == 3
        total = conn.exec_driver_sql("SELECT sum(rejected) FROM host_totals").scalar_one()
    assert total == 3
    engine.dispose()


def test_store_error_comes_back_as_writer_down(tmp_path: Path) -> None:
    """No schema: the child's INSERT fails, the parent gets the reason, the child lives."""
    url = f"sqlite:///{tmp_path / 'empty.db'}"

    async def go() -> tuple[str, str, int | None]:
        writer = EventProcess(url)
        errors = []
        for _ in range(2):
            with pytest.raises(WriterDown) as e:
                await writer.write(ROWS)
            errors.append(str(e.value))
        assert writer._proc is not None
        still = writer._proc.returncode
        await writer.close()
        return errors[0], errors[1], still

    first, second, returncode = asyncio.run(go())
    assert first == second == "no such table: events"
    assert returncode is None  # one child served both attempts


@pytest.mark.parametrize(("code", "why"), [
    ("import sys; sys.stdin.buffer.read(4); sys.exit(3)", "exited with status 3"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "killed by signal 9"),
])
def test_child_dying_mid_batch_is_writer_down_and_a_new_child_is_started(
        code: str, why: str) -> None:
    async def go() -> None:
        writer = EventProcess("sqlite://", argv=child(code))
        with pytest.raises(WriterDown, match=f"^event writer process {why}$"):
            await writer.write(ROWS)
        assert writer._proc is None
        with pytest.raises(WriterDown):  # started again for the next try
            await writer.write(ROWS)

    asyncio.run(go())
