"""Helpers for the hardening tests: a raw SMTP client, event queries, a relay with faults."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from relay.store.database import make_engine
from relay.store.tables import Event
from tests.support import FLOODGATE, RelayProcess, floodgate, free_port, wait_until, write_config

ALIASES = "alice@example.org\nbob@example.org\n"
MESSAGE = b"From: a@sender.test\r\nTo: alice@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"


class Raw:
    """An SMTP client that sends exactly the bytes it is given."""

    def __init__(self, port: int, host: str = "127.0.0.1", greet: bool = True,
                 timeout: float = 15.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = bytearray()
        self.banner = self.reply() if greet else ""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def lines(self) -> list[str]:
        """One complete reply, every line of it."""
        out: list[str] = []
        while True:
            i = self.buf.find(b"\r\n")
            if i < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; got {bytes(self.buf)!r} after {out}")
                self.buf += chunk
                continue
            line = bytes(self.buf[:i]).decode("utf-8", "replace")
            del self.buf[: i + 2]
            out.append(line)
            if len(line) < 4 or line[3] != "-":
                return out

    def reply(self) -> str:
        return self.lines()[-1]

    def cmd(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """True once the server has closed the connection (waits for it)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def transaction(raw: Raw, rcpt: str = "alice@example.org", sender: str = "s@sender.test") -> None:
    assert raw.cmd("EHLO raw.test").startswith("250 ")
    assert raw.cmd(f"MAIL FROM:<{sender}>").startswith("250 ")
    assert raw.cmd(f"RCPT TO:<{rcpt}>").startswith("250 ")
    assert raw.cmd("DATA").startswith("354 ")


def spooled(relay: RelayProcess) -> list[Path]:
    queue = relay.config.parent / f"spool-{relay.config.stem}" / "queue"
    return sorted(queue.glob("*.msg")) if queue.exists() else []


def events(store_url: str, where: Callable[[Any], bool] = lambda e: True,
           at_least: int = 1, what: str = "events") -> list[Any]:
    """Wait until at least `at_least` events match `where`; return those."""
    engine = make_engine(store_url)

    def found() -> list[Any] | None:
        with engine.connect() as conn:
            rows = [r for r in conn.execute(select(Event.__table__)).all() if where(r)]
        return rows if len(rows) >= at_least else None

    try:
        if at_least == 0:  # what is there now (call it after waiting for a later event)
            with engine.connect() as conn:
                return [r for r in conn.execute(select(Event.__table__)).all() if where(r)]
        return wait_until(found, what=what)  # type: ignore[return-value]
    finally:
        engine.dispose()


class FaultyRelay(RelayProcess):
    """The relay with tests/fault_relay.py's injected faults."""

    def start(self, wait: bool = True) -> FaultyRelay:
        import subprocess

        from tests.support import ROOT

        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fault_relay", "-c",
                                      str(self.config), "serve"], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        if wait:
            self.wait_for_log(r" ready ")
        return self


def start_faulty(tmp_path: Path, store_url: str, started: list[RelayProcess],
                 **config: Any) -> FaultyRelay:
    port = free_port()
    path = write_config(tmp_path / "faulty.toml", store_url=store_url, port=port, **config)
    (tmp_path / "faulty-aliases.txt").write_text(ALIASES)
    floodgate(path, "aliases", "import", "--format", "list", str(tmp_path / "faulty-aliases.txt"))
    relay = FaultyRelay(path, port)
    started.append(relay)
    return relay.start()


__all__ = ["FLOODGATE", "Raw", "events", "spooled", "start_faulty", "transaction"]
