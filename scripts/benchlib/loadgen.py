"""An asyncio SMTP load generator: cheap enough to share two cores with the relay.

Each session is a tiny `asyncio.Protocol` state machine (no StreamReader, no per-line
coroutine): it waits for a complete reply, checks its code, sends the next command. Sessions
come from many source addresses in 127.0.0.0/8 so that per-host logic and the kernel see
many clients. Closed loop: `concurrency` sessions in flight until the deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# One step: bytes to send (None: send nothing, just read the next reply) and the reply
# code expected (None: any). The first step of a session is always the greeting.
Step = tuple[bytes | None, int | None]


def source_addresses(first: int = 2, count: int = 250, net: int = 10) -> list[str]:
    """`count` loopback addresses 127.<net>.x.y (the whole of 127/8 is routed to lo)."""
    return [f"127.{net}.{(first + i) // 250}.{(first + i) % 250 + 1}" for i in range(count)]


class SessionError(Exception):
    pass


class _Session(asyncio.Protocol):
    __slots__ = ("buf", "codes", "done", "hold", "i", "steps", "transport")

    def __init__(self, steps: Sequence[Step], done: asyncio.Future[list[int]], hold: bool):
        self.steps = steps
        self.i = 0
        self.buf = b""
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.codes: list[int] = []
        self.hold = hold  # keep the connection open after the last step (idle test)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        first = self.steps[0][0]
        if first is not None:  # a client that speaks first (never, for SMTP; kept general)
            transport.write(first)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                break
            line = buf[:end]
            buf = buf[end + 2:]
            if len(line) >= 4 and line[3:4] == b"-":
                continue  # a continuation line of a multi-line reply
            self._reply(int(line[:3]) if line[:3].isdigit() else 0)
            if self.done.done():
                return
        self.buf = buf

    def _reply(self, code: int) -> None:
        expect = self.steps[self.i][1]
        self.codes.append(code)
        if expect is not None and code != expect:
            self._finish(SessionError(f"step {self.i}: expected {expect}, got {code}"))
            return
        self.i += 1
        if self.i >= len(self.steps):
            self._finish(None)
            return
        data = self.steps[self.i][0]
        if data is not None:
            assert self.transport is not None
            self.transport.write(data)

    def _finish(self, error: Exception | None) -> None:
        if not self.done.done():
            if error is None:
                self.done.set_result(self.codes)
            else:
                self.done.set_exception(error)
        if not self.hold and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(SessionError(
                f"connection lost at step {self.i} after {self.codes}: {exc}"))


async def session(host: str, port: int, steps: Sequence[Step], source: str | None = None,
                  hold: bool = False, timeout: float = 60.0
                  ) -> tuple[list[int], asyncio.Transport | None]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[int]] = loop.create_future()
    proto = _Session(steps, done, hold)
    # A socket of our own: create_connection(host, local_addr=...) resolves both addresses
    # through getaddrinfo on every call, which costs the generator more than the session.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if source:
            sock.bind((source, 0))
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    transport, _ = await loop.create_connection(lambda: proto, sock=sock)
    try:
        async with asyncio.timeout(timeout):
            codes = await done
    except BaseException:
        transport.close()
        raise
    return codes, transport if hold else None


@dataclass
class LoadResult:
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(p / 100 * len(data)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")

    @property
    def p99(self) -> float:
        return self.pct(99)


async def drive(host: str, port: int, make_steps: Callable[[int], Sequence[Step]], *,
                concurrency: int, duration: float, warmup: float = 1.0,
                sources: Sequence[str] | None = None, limit: int = 0,
                timeout: float = 60.0) -> LoadResult:
    """Closed loop: `concurrency` sessions at a time for `warmup` + `duration` seconds (or
    until `limit` sessions), counting only sessions that end inside the measured window."""
    result = LoadResult()
    counter = itertools.count()
    srcs = itertools.cycle(sources or [None])  # type: ignore[list-item]
    start = time.perf_counter()
    measure_from = start + warmup
    deadline = float("inf") if limit else measure_from + duration

    async def worker() -> None:
        while True:
            now = time.perf_counter()
            if now >= deadline:
                return
            n = next(counter)
            if limit and n >= limit:
                return
            t0 = time.perf_counter()
            try:
                await session(host, port, make_steps(n), next(srcs), timeout=timeout)
            except (OSError, SessionError, TimeoutError) as e:
                t1 = time.perf_counter()
                if t1 >= measure_from:
                    result.errors += 1
                    result.first_error = result.first_error or f"{type(e).__name__}: {e}"
                continue
            t1 = time.perf_counter()
            if measure_from <= t1 <= deadline or limit:
                result.ok += 1
                result.latencies.append(t1 - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    end = min(time.perf_counter(), deadline)
    result.seconds = end - (start if limit else measure_from)
    return result


# -- session scripts ----------------------------------------------------------------------

def dictionary_steps(n: int, domain: str = "example.org") -> list[Step]:
    """connect, EHLO, MAIL, RCPT to an unknown address (550), QUIT."""
    return [(None, 220), (b"EHLO bot%d.invalid\r\n" % (n % 997), 250),
            (b"MAIL FROM:<x%d@spammer.invalid>\r\n" % n, 250),
            (b"RCPT TO:<nobody%d@%s>\r\n" % (n, domain.encode()), 550),
            (b"QUIT\r\n", 221)]


def blocked_steps(n: int) -> list[Step]:
    """connect, read the 554 refusal, the server hangs up."""
    return [(None, 554)]


def mail_steps(rcpt: str, message: bytes, sender: str = "alice@sender.example",
               expect: int = 250) -> list[Step]:
    """A whole transaction; `message` must be dot-stuffed with CRLF line ends."""
    return [(None, 220), (b"EHLO client.example\r\n", 250),
            (f"MAIL FROM:<{sender}>\r\n".encode(), 250),
            (f"RCPT TO:<{rcpt}>\r\n".encode(), 250), (b"DATA\r\n", 354),
            (message + b".\r\n", expect), (b"QUIT\r\n", 221)]


def to_wire(message: bytes) -> bytes:
    """LF or CRLF text -> CRLF with dot-stuffing, ending in CRLF (ready for `.\\r\\n`)."""
    text = message.replace(b"\r\n", b"\n")
    if not text.endswith(b"\n"):
        text += b"\n"
    lines = text.split(b"\n")[:-1]
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
