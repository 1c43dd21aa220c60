"""The event writer process, parent side, against children that fail on purpose (a real
child is tested through the relay in test_service.py and everywhere events are counted)."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import sys
from pathlib import Path

import pytest

from relay.events.process import EventProcess, WriterDown
from relay.events.record import FIELDS, EventRecord, as_row
from relay.events.writer import EventWriter
from relay.store.database import make_engine, upgrade
from tests.support import event_count


def record(recipient: str) -> EventRecord:
    return EventRecord(ts=EventRecord.now(), node="t", client="192.0.2.1", host="192.0.2.1",
                       stage="rcpt", action="reject", reason="unknown_rcpt",
                       recipient=recipient)


ROWS = [as_row(record(f"u{i}@example.org")) for i in range(3)]


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
    assert event_count(engine) == 3
    with engine.connect() as conn:
        total = conn.exec_driver_sql("SELECT sum(rejected) FROM host_totals").scalar_one()
    assert total == 3
    engine.dispose()


def test_enum_members_in_event_fields_are_written_as_their_values(tmp_path: Path) -> None:
    """The pipe carries marshal, which refuses str and int subclasses: a batch holding an
    enum member must still be written, as the plain value."""

    class Reason(enum.StrEnum):
        UNKNOWN = "unknown_rcpt"

    class Code(enum.IntEnum):
        NO_USER = 550

    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = make_engine(url)
    upgrade(engine)
    rows = [as_row(dataclasses.replace(record("u@example.org"), reason=Reason.UNKNOWN,
                                       code=Code.NO_USER))]

    async def go() -> None:
        writer = EventProcess(url)
        await writer.write(rows)
        await writer.close()

    asyncio.run(go())
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT reason, code FROM events").all()
    assert [tuple(r) for r in stored] == [("unknown_rcpt", 550)]
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


# A child that reads `n` frames before it answers any (one in flight at a time would
# deadlock here), answers each with the next of `answers`, and logs what it got to `log`.
TWO_FIRST = """
import marshal, sys
from filters.childproc import read_frame
answers, log = sys.argv[1].split(","), open(sys.argv[2], "a")
frames = [read_frame(0) for _ in range(2)]
while True:
    for rows, answer in zip(frames, answers):
        log.write(repr([r[RECIPIENT] for r in marshal.loads(rows)]) + " " + answer + "\\n")
        log.flush()
        sys.stdout.write(answer.replace("_", " ") + "\\n")
        sys.stdout.flush()
    answers = answers[len(frames):] or ["ok"]
    try:
        frames = [read_frame(0)]
    except EOFError:
        break
""".replace("RECIPIENT", str(FIELDS.index("recipient")))  # the row's recipient: the batch's tag


def batch(tag: str, n: int = 2) -> list[tuple[object, ...]]:
    return [as_row(record(f"{tag}{i}")) for i in range(n)]


def test_two_batches_in_flight_get_their_own_answers_in_order(tmp_path: Path) -> None:
    log = tmp_path / "child.log"

    async def go() -> list[BaseException | None]:
        writer = EventProcess("sqlite://", argv=[*child(TWO_FIRST), "ok,err_locked", str(log)])
        results = await asyncio.wait_for(asyncio.gather(
            writer.write(batch("a")), writer.write(batch("b")), return_exceptions=True), 20)
        await writer.close()
        return results

    first, second = asyncio.run(go())
    assert first is None
    assert isinstance(second, WriterDown) and str(second) == "locked"
    assert log.read_text().splitlines() == ["['a0', 'a1'] ok", "['b0', 'b1'] err_locked"]


def test_cancelled_write_kills_the_child_and_the_next_write_gets_a_new_one(
        tmp_path: Path) -> None:
    """Cancelled before its answer was read, a write leaves the pipe out of step: that child
    must serve nobody else."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = make_engine(url)
    upgrade(engine)
    hang = child("import sys, time; sys.stdin.buffer.read(8); time.sleep(60)")

    async def go() -> int | None:
        writer = EventProcess(url, argv=hang)
        task = asyncio.create_task(writer.write(ROWS))
        while writer._turn is None:  # until the batch is on its way (no clock involved)
            await asyncio.sleep(0)
        proc = await writer.ensure()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        status = await asyncio.wait_for(proc.wait(), 10)
        writer.argv = [sys.executable, "-m", "relay.events.process"]  # a real one from now on
        await writer.write(ROWS)
        await writer.close()
        return status

    status = asyncio.run(go())
    assert status == -9
    assert event_count(engine) == 3
    engine.dispose()


def test_writer_puts_a_failed_batch_back_in_front_and_loses_nothing(tmp_path: Path) -> None:
    """Two batches in flight, the first fails: it is written again, before anything newer,
    and the second is not written twice."""
    log = tmp_path / "child.log"
    engine = make_engine(f"sqlite:///{tmp_path / 'unused.db'}")

    async def go() -> int:
        writer = EventWriter(engine, batch=2, interval=0.01)
        writer.process.argv = [*child(TWO_FIRST), "err_busy,ok", str(log)]
        for tag in "ab":
            for i in range(2):
                writer.emit(record(f"{tag}{i}"))
        task = asyncio.create_task(writer.run())
        async with asyncio.timeout(20):
            while writer.written < 4:  # the state we wait for, not a guess at a duration
                await asyncio.sleep(0.01)
        await writer.close(task)
        return writer.written

    assert asyncio.run(go()) == 4
    assert log.read_text().splitlines() == [
        "['a0', 'a1'] err_busy", "['b0', 'b1'] ok", "['a0', 'a1'] ok"]
    engine.dispose()
