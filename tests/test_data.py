"""read_data and its turns: a big message is read whole while it shares the loop."""

from __future__ import annotations

import asyncio
import collections

from relay.smtp.body import BLOCK, BulkTurns, DataScanner, read_data


def test_bulk_turns_grant_at_most_per_turn_blocks_each_turn_of_the_loop() -> None:
    async def go() -> dict[int, int]:
        loop = asyncio.get_running_loop()
        turn = 0
        running = True

        def tick() -> None:  # runs once per turn of the loop
            nonlocal turn
            turn += 1
            if running:
                loop.call_soon(tick)

        tick()
        turns = BulkTurns(per_turn=3)
        granted: collections.Counter[int] = collections.Counter()

        async def reader() -> None:
            for _ in range(4):
                await turns.take()
                granted[turn] += 1

        await asyncio.gather(*(reader() for _ in range(10)))
        running = False
        return granted

    granted = asyncio.run(go())
    assert sum(granted.values()) == 40
    assert max(granted.values()) <= 3
    assert len(granted) >= 40 // 3


def test_a_cancelled_waiter_takes_no_turn() -> None:
    async def go() -> list[str]:
        turns = BulkTurns(per_turn=1)
        order: list[str] = []

        async def reader(name: str) -> None:
            await turns.take()
            order.append(name)

        await turns.take()  # this turn's one block
        first = asyncio.create_task(reader("cancelled"))
        second = asyncio.create_task(reader("second"))
        await turns.take()  # the next turn's: the two readers wait behind it
        first.cancel()
        await asyncio.wait_for(second, 10)  # a lost turn would leave it waiting forever
        return order

    assert asyncio.run(go()) == ["second"]


def test_read_data_reads_a_message_of_many_blocks_and_gives_back_what_follows() -> None:
    line = b"x" * 76 + b"\r\n"
    body = line * (3 * BLOCK // len(line)) + b"..dot\r\n"

    async def go() -> tuple[bytes, bytes]:
        reader = asyncio.StreamReader(limit=1001)
        for i in range(0, len(body), 10_000):  # as a socket would: in pieces
            reader.feed_data(body[i:i + 10_000])
        reader.feed_data(b".\r\nQUIT\r\n")
        reader.feed_eof()
        scanner = DataScanner()
        await read_data(reader, scanner, BulkTurns(per_turn=1))
        return scanner.content(), await reader.read()

    content, rest = asyncio.run(go())
    assert content == body[:-7] + b".dot\r\n"
    assert rest == b"QUIT\r\n"
