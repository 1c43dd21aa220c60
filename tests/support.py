"""Test helpers: free ports, a private PostgreSQL cluster, config files and relay processes.

Everything here starts real programs and waits on conditions (a port, a log line), never on
a fixed sleep.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, func, select

ROOT = Path(__file__).resolve().parent.parent
FLOODGATE = [sys.executable, "-m", "relay.cli"]
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def event_count(engine: Engine) -> int:
    """Events in the store, as every report counts them (a row may stand for many: the
    relay folds a flood); the relay writes them a batch at a time: wait_until on it."""
    from relay.store.tables import events_counted

    with engine.connect() as conn:
        return conn.execute(select(func.coalesce(events_counted(), 0))).scalar_one()


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, what: str = "") -> object:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


REF = re.compile(r"^(.*) \[ref ([0-9a-f]{12})\]$", re.S)


def split_ref(reply: str | bytes) -> tuple[str, str]:
    """(the reply's text, its session reference) for a reply that ends a transaction or
    refuses: `550 5.1.1 User unknown [ref 3f9a1c2b7e10]`. Fails the test when the reply
    carries no reference, so a test comparing the text also checks the reference is there."""
    text = reply.decode() if isinstance(reply, bytes) else reply
    m = REF.match(text)
    if m is None:
        raise AssertionError(f"no [ref ...] at the end of {text!r}")
    return m.group(1), m.group(2)


def unref(reply: str | bytes) -> str:
    """The reply's text without its (required) `[ref ...]`: what tests compare."""
    return split_ref(reply)[0]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class PostgresCluster:
    """A throw-away PostgreSQL cluster: initdb into a temporary directory, on a free port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="floodgate-pg-"))
        self.port = free_port()
        self.counter = 0

    def _as_postgres(self, *cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True,
                              **kw)  # type: ignore[call-overload]

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-U",
                          "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.resume()

    def _pg_ctl(self, *args: str) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), *args)

    def pause(self) -> None:
        """Stop the server, keeping its data: the store becomes unreachable."""
        self._pg_ctl("-m", "fast", "-w", "stop")

    def resume(self) -> None:
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c max_connections=200")
        self._pg_ctl("-o", opts, "-w", "-l", str(self.dir / "log"), "start")

    def stop(self) -> None:
        subprocess.run(
            (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])
            + [str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"],
            capture_output=True, check=False,
        )
        shutil.rmtree(self.dir, ignore_errors=True)

    def create_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        import psycopg

        self.counter += 1
        name = f"t{os.getpid()}_{self.counter}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


def write_config(path: Path, *, store_url: str, port: int, extra_relay: str = "",
                 extra_store: str = "", extra: str = "",
                 listen: list[str] | None = None,
                 extra_delivery: str = "enabled = false",
                 max_message_size: int = 100_000, refresh: str = "0.2s") -> Path:
    """`extra_delivery`: the `[delivery]` section's lines. Off unless a test asks, so tests
    of the front end see the spool (and the events) exactly as the SMTP side left them."""
    listen = listen or [f"127.0.0.1:{port}"]
    listen_toml = ", ".join(f'"{x}"' for x in listen)
    path.write_text(f"""
[relay]
node = "{path.stem}"
hostname = "mx1.example.net"
listen = [{listen_toml}]
max_message_size = {max_message_size}
max_recipients = 5
spool_dir = "spool-{path.stem}"
shutdown_grace = "10s"
{extra_relay}

[store]
url = "{store_url}"
refresh_interval = "{refresh}"
event_flush_interval = "0.1s"
{extra_store}

[delivery]
{extra_delivery}

[domains."example.org"]
next_hop = "127.0.0.1:2600"
[domains."example.net"]
next_hop = "127.0.0.1:2600"
[domains."catchall.test"]
next_hop = "127.0.0.1:2600"
catch_all = true
{extra}
""")
    return path


def floodgate(config: Path, *args: str, input: str | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the CLI the way an operator does."""
    proc = subprocess.run([*FLOODGATE, "-c", str(config), *args], capture_output=True,
                          text=True, input=input, cwd=ROOT, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"floodgate {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


class RelayProcess:
    """`floodgate serve` in a subprocess, ready once it logs `ready`."""

    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None,
                 command: tuple[str, ...] = ("serve",), log_name: str = ""):
        """`command`: `serve`, or `policy`/`milter` with their `--listen`; `log_name`
        tells apart the logs of several processes sharing one configuration file."""
        self.config = config
        self.port = port
        self.env = env  # None: ours
        self.command = command
        self.log_path = config.with_suffix(f".{log_name}.log" if log_name else ".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> RelayProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([*FLOODGATE, "-c", str(self.config), *self.command],
                                     stdout=log,
                                     stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        log.close()
        if wait:
            self.wait_for_log(r" ready ")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            m = re.search(pattern, self.log())
            if m is None and self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"relay exited ({self.proc.returncode}):\n{self.log()}")
            return m

        try:
            return wait_until(found, timeout, f"log line {pattern!r}")  # type: ignore[return-value]
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.stacks()}") from None

    def stacks(self) -> str:
        """The relay's thread stacks (SIGUSR1, faulthandler) and its log's tail: why it hung."""
        if self.proc is None or self.proc.poll() is not None:
            return self.log()[-4000:]
        before = len(self.log())
        self.proc.send_signal(signal.SIGUSR1)
        # the dump is written thread by thread; the main thread's ends in relay/cli/main.py
        wait_until(lambda: "relay/cli/main.py" in self.log()[before:], 10, "stack dump")
        return self.log()[before:]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"relay did not stop on SIGTERM:\n{self.log()}") from None


class LoopTurns:
    """Counts the turns of the running event loop (a callback that re-arms itself), to
    show that work left the loop free to serve other sessions: `start()`, then `stop()`."""

    def __init__(self) -> None:
        self.turns = 0
        self._stopped = False

    def start(self) -> LoopTurns:
        self._tick()
        return self

    def stop(self) -> int:
        self._stopped = True
        return self.turns

    def _tick(self) -> None:
        self.turns += 1
        if not self._stopped:
            asyncio.get_running_loop().call_soon(self._tick)
