"""Scenario 8: one hostile client at a time (issue #16), each measured from outside.

While one attack runs from a process of its own, a NOOP probe on another connection times
the relay's replies (a stalled event loop answers nothing, so the probe's worst reply
bounds the longest stall) and the relay's RSS is sampled. The baseline is the same probe
with no attack, in the same run. The attacker prints one JSON object: what it got.

    python -m scripts.benchlib.attacks ATTACK PORT    (run by scenario_8)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from scripts.benchlib import loadgen as lg
from tests import pathological

VALID = 200  # addresses in the harvest scenario's alias table
WORDS = 1889  # the dictionary a harvester tries (VALID of them exist)
HOLDERS, HELD = 40, 20 * 2**20  # unfinished DATA: connections, bytes each
FLOOD_HOSTS = 2000  # event flood: distinct sources


def harvest_aliases(path: Path) -> Path:
    path.write_text("".join(f"user{i}@example.org user{i}@mail.example.org\n"
                            for i in range(VALID)))
    return path


async def _open(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0),
                                                  limit=2**20)
    await _reply(reader)
    return reader, writer


async def _reply(reader: asyncio.StreamReader) -> int:
    """The code of one (possibly multi-line) reply; 0 when the connection closed."""
    while True:
        line = await reader.readline()
        if not line:
            return 0
        if line[3:4] != b"-":
            return int(line[:3])


async def _transaction(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       rcpt: str = "alice@example.org") -> None:
    for cmd in (b"EHLO attacker.invalid", b"MAIL FROM:<a@attacker.invalid>",
                f"RCPT TO:<{rcpt}>".encode(), b"DATA"):
        writer.write(cmd + b"\r\n")
        await _reply(reader)


async def _send_messages(port: int, net: str, message: bytes, count: int) -> list[int]:
    """`count` clients at once, each sending `message` (CRLF, not dot-stuffed: the
    messages of tests/pathological.py have no line starting with a dot)."""
    async def one(i: int) -> int:
        reader, writer = await _open(f"{net}.{i + 1}", port)
        await _transaction(reader, writer)
        writer.write(message + b".\r\n")
        code = await _reply(reader)
        writer.close()
        return code

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def folded_header(port: int) -> dict[str, Any]:
    """Ten clients, each with one header folded over 124,000 lines (9.5 MB)."""
    return {"replies": await _send_messages(port, "127.30.1", pathological.folded_header(),
                                            10)}


async def pipelined_rcpt(port: int) -> dict[str, Any]:
    """Ten sessions, each writing 1,000 unknown RCPTs in one go."""
    async def one(i: int) -> list[int]:
        reader, writer = await _open(f"127.30.2.{i + 1}", port)
        writer.write(b"EHLO bot.invalid\r\nMAIL FROM:<x@bot.invalid>\r\n" + b"".join(
            b"RCPT TO:<nobody%d@example.org>\r\n" % n for n in range(1000)))
        codes = []
        while len(codes) < 1002 and (code := await _reply(reader)):
            codes.append(code)
        writer.close()
        return codes

    runs = await asyncio.gather(*(one(i) for i in range(10)))
    return {"replies": sum(len(c) for c in runs), "cut_off_421": sum(421 in c for c in runs)}


async def pipelined_noop(port: int) -> dict[str, Any]:
    """One session writing 100,000 NOOPs in one go."""
    reader, writer = await _open("127.30.3.1", port)
    writer.write(b"NOOP\r\n" * 100_000)
    codes = []
    with contextlib.suppress(ConnectionError):  # cut off: the rest of the write is refused
        while len(codes) < 100_000 and (code := await _reply(reader)):
            codes.append(code)
    writer.close()
    return {"replies": len(codes), "cut_off_421": 421 in codes}


async def mime_parts(port: int) -> dict[str, Any]:
    """Ten 1 MB messages of tiny parts at once, in the shape that sent the splitter to the
    email package (two boundary lines in a row)."""
    return {"replies": await _send_messages(port, "127.30.4", pathological.tiny_parts(), 10)}


async def many_headers(port: int) -> dict[str, Any]:
    """Ten messages of 1 MB of short header fields at once."""
    return {"replies": await _send_messages(port, "127.30.7", pathological.many_headers(),
                                            10)}


async def unfinished_data(port: int) -> dict[str, Any]:
    """Forty connections each sending 20 MB of DATA without the final dot, then holding
    them until told to go (a line on stdin)."""
    line = b"y" * 998 + b"\r\n"
    block = line * 64

    async def one(i: int) -> asyncio.StreamWriter:
        reader, writer = await _open(f"127.30.5.{i + 1}", port)
        await _transaction(reader, writer)
        for _ in range(HELD // len(block)):
            writer.write(block)
            await writer.drain()
        return writer

    writers = await asyncio.gather(*(one(i) for i in range(HOLDERS)))
    print(json.dumps({"holding": len(writers)}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    for w in writers:
        w.close()
    return {"held_mb": HOLDERS * HELD // 2**20}


async def harvest(port: int) -> dict[str, Any]:
    """One session trying a 1,889-word dictionary, one RCPT at a time."""
    reader, writer = await _open("127.30.6.1", port)
    writer.write(b"EHLO harvester.invalid\r\n")
    await _reply(reader)
    writer.write(b"MAIL FROM:<h@harvester.invalid>\r\n")
    await _reply(reader)
    learned = tried = 0
    for n in range(WORDS):
        word = f"user{n // 9}" if n % 9 == 0 and n // 9 < VALID else f"word{n}"
        writer.write(f"RCPT TO:<{word}@example.org>\r\n".encode())
        code = await _reply(reader)
        if code == 452:  # too many recipients: a new transaction, as RFC 5321 asks
            writer.write(b"RSET\r\nMAIL FROM:<h@harvester.invalid>\r\n")
            await _reply(reader)
            await _reply(reader)
            writer.write(f"RCPT TO:<{word}@example.org>\r\n".encode())
            code = await _reply(reader)
        if code in (0, 421):
            break
        tried += 1
        learned += code == 250
    writer.close()
    return {"tried": tried, "learned": learned}


async def event_flood(port: int, seconds: float = 8.0) -> dict[str, Any]:
    """A dictionary flood from 2,000 sources; counts the 550s it was given."""
    sources = lg.source_addresses(net=31, count=FLOOD_HOSTS)
    result = await lg.drive("127.0.0.1", port, lg.dictionary_steps, concurrency=64,
                            duration=seconds, warmup=0, sources=sources)
    return {"refused_rcpts": result.ok, "errors": result.errors}


ATTACKS: dict[str, Callable[[int], Awaitable[dict[str, Any]]]] = {
    "folded_header": folded_header, "pipelined_rcpt": pipelined_rcpt,
    "pipelined_noop": pipelined_noop, "mime_parts": mime_parts, "many_headers": many_headers,
    "unfinished_data": unfinished_data, "harvest": harvest, "event_flood": event_flood,
}


def main() -> None:
    name, port = sys.argv[1], int(sys.argv[2])
    t0 = time.perf_counter()
    out = asyncio.run(ATTACKS[name](port))
    out["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
