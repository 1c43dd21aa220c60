"""The split child process (filters/offload.py): same answer as in-process, and it survives
its child dying or a caller giving up halfway."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from filters.mime import split_digests
from filters.offload import SplitProcess
from tests.support import ROOT, LoopTurns


def messages() -> list[bytes]:
    zipped = (ROOT / "fixtures" / "messages" / "clam-zip.eml").read_bytes()
    eicar = (ROOT / "fixtures" / "messages" / "eicar.eml").read_bytes()
    return [zipped, eicar, zipped * 300]  # the last: over a megabyte, as the relay sends


def test_child_answers_as_split_digests_would() -> None:
    async def go() -> list[object]:
        splitter = SplitProcess()
        try:
            return [await splitter.split_digests(m) for m in messages()]
        finally:
            await splitter.close()

    assert asyncio.run(go()) == [split_digests(m) for m in messages()]


def test_a_killed_child_is_replaced(caplog: pytest.LogCaptureFixture) -> None:
    message = messages()[0]

    async def go() -> object:
        splitter = SplitProcess()
        first = await splitter.start()
        os.kill(first.pid, signal.SIGKILL)
        await first.wait()
        try:
            return await splitter.split_digests(message)
        finally:
            await splitter.close()

    assert asyncio.run(go()) == split_digests(message)


def test_a_cancelled_call_does_not_hand_its_answer_to_the_next() -> None:
    big, small = messages()[2], messages()[1]

    async def go() -> object:
        splitter = SplitProcess()
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.001):  # gives up mid-exchange
                    await splitter.split_digests(big)
            return await splitter.split_digests(small)
        finally:
            await splitter.close()

    assert asyncio.run(go()) == split_digests(small)


def test_a_small_message_of_complex_structure_is_split_off_the_loop() -> None:
    """A 1 MB message of tiny parts (the email package's 640 ms) is split by the child,
    payloads included, while the event loop keeps turning; an ordinary one stays on the
    loop, with no round trip."""
    from filters import offload
    from filters.clamav import ClamAVFilter, ClamdClient
    from filters.mime import split_parts
    from tests.pathological import tiny_parts

    hard, plain = tiny_parts(1 << 20), messages()[0]

    async def go() -> tuple[object, object, int, int, int]:
        check = ClamAVFilter(ClamdClient("127.0.0.1:9"))
        await offload.start_worker()
        try:
            loop = LoopTurns().start()
            before = loop.turns
            ordinary = await check._split(plain)
            ordinary_turns = loop.turns - before
            before = loop.turns
            complex_ = await check._split(hard)
            return ordinary, complex_, ordinary_turns, loop.stop() - before, check.offloaded
        finally:
            await offload._SPLITTER.close()

    ordinary, complex_, ordinary_turns, complex_turns, offloaded = asyncio.run(go())
    assert ordinary == split_parts(plain) and ordinary_turns == 0
    assert complex_ == split_parts(hard) and offloaded == 1
    assert complex_turns > 10  # the loop went on while the child split it
