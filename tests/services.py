"""Start private clamd and spamd instances for tests and the demo, and stop them.

Real services, as the design asks: Debian's /usr/sbin/clamd loading only the project's
signatures from fixtures/clamav/ (no freshclam, no official database), and /usr/sbin/spamd
with network tests off. Readiness is polled on the socket (PING/PONG), never slept for.

    with run_clamd(tmp) as clamd, run_spamd(tmp) as spamd:
        ClamdClient(clamd.address) ... spamd.address
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SIGNATURES = FIXTURES / "clamav"
MESSAGES = FIXTURES / "messages"
CLAMD = os.environ.get("FLOODGATE_CLAMD", "/usr/sbin/clamd")
SPAMD = os.environ.get("FLOODGATE_SPAMD", "/usr/sbin/spamd")
STARTUP_TIMEOUT = 90.0
POLL = 0.05

_SCAN_LINE = re.compile(r"^instream\([^)]*\): (OK|.+ FOUND)$", re.MULTILINE)


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ask(family: int, address: str | tuple[str, int], payload: bytes, timeout: float) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str,
          log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(POLL)  # polling interval, not synchronisation: readiness is checked above
    raise ServiceError(f"{what} not ready after {STARTUP_TIMEOUT:g}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass
class Clamd:
    """A private clamd: unix socket `socket_path` and TCP `127.0.0.1:port`."""

    workdir: Path
    port: int
    database: Path
    stream_max_length: str = "10M"
    max_threads: int = 4
    # clamd's own limits (None: clamd's defaults); tests set them low to go past them cheaply
    max_file_size: str | None = None
    max_scan_size: str | None = None
    max_recursion: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket_path(self) -> Path:
        return self.workdir / "clamd.sock"

    @property
    def log(self) -> Path:
        return self.workdir / "clamd.log"

    @property
    def address(self) -> str:
        """TCP address for ClamdClient / `[clamav] address`."""
        return f"127.0.0.1:{self.port}"

    @property
    def unix_address(self) -> str:
        return str(self.socket_path)

    @property
    def config(self) -> Path:
        return self.workdir / "clamd.conf"

    def write_config(self) -> None:
        self.config.write_text("\n".join([
            "Foreground yes",
            f"LocalSocket {self.socket_path}",
            f"TCPSocket {self.port}",
            "TCPAddr 127.0.0.1",
            f"DatabaseDirectory {self.database}",
            f"LogFile {self.log}",
            "LogClean yes",  # every scan leaves a line: the tests count them
            "LogTime no",
            f"PidFile {self.workdir / 'clamd.pid'}",
            f"StreamMaxLength {self.stream_max_length}",
            f"MaxThreads {self.max_threads}",
            "SelfCheck 0",
            # Past MaxFileSize, MaxScanSize or MaxRecursion clamd answers OK unless told to
            # say "Heuristics.Limits.Exceeded.*": the relay refuses what was not looked at.
            "AlertExceedsMax yes",
            *(f"{name} {value}" for name, value in (
                ("MaxFileSize", self.max_file_size), ("MaxScanSize", self.max_scan_size),
                ("MaxRecursion", self.max_recursion)) if value is not None),
            "",
        ]))

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.write_config()
        out = open(self.workdir / "clamd.out", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen([CLAMD, "--foreground", "-c", str(self.config)],
                                     stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        out.close()
        _wait(self.ping, self.proc, "clamd", self.workdir / "clamd.out")

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def ping(self) -> bool:
        return _ask(socket.AF_INET, ("127.0.0.1", self.port), b"zPING\0", 2.0) == b"PONG\0"

    def scans(self) -> int:
        """INSTREAM scans clamd has logged (clean and infected) since this workdir began."""
        try:
            return len(_SCAN_LINE.findall(self.log.read_text(errors="replace")))
        except FileNotFoundError:
            return 0

    def wait_scans(self, count: int, timeout: float = 10.0) -> int:
        """clamd writes its log line just after replying: poll until `count` are there."""
        deadline = time.monotonic() + timeout
        while (n := self.scans()) < count and time.monotonic() < deadline:
            time.sleep(POLL)
        return n


@contextlib.contextmanager
def run_clamd(workdir: Path, database: Path = SIGNATURES, port: int = 0,
              **kw: object) -> Iterator[Clamd]:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    clamd = Clamd(workdir, port or free_port(), Path(database), **kw)  # type: ignore[arg-type]
    clamd.start()
    try:
        yield clamd
    finally:
        clamd.stop()


@dataclass
class Spamd:
    """A private spamd on `127.0.0.1:port`, local tests only, no user configs."""

    workdir: Path
    port: int
    max_children: int = 2
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "spamd.log"

    def command(self) -> list[str]:
        cmd = [SPAMD, "--local", "--nouser-config", f"--listen=127.0.0.1:{self.port}",
               f"--pidfile={self.workdir / 'spamd.pid'}", f"--max-children={self.max_children}",
               "--min-children=1", f"--syslog={self.log}", "--allowed-ips=127.0.0.1"]
        if os.geteuid() == 0:
            cmd.append("--username=nobody")  # spamd will not run its children as root
        return cmd

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        out = open(self.workdir / "spamd.out", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir)
        out.close()
        _wait(self.ping, self.proc, "spamd", self.log)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def ping(self) -> bool:
        reply = _ask(socket.AF_INET, ("127.0.0.1", self.port), b"PING SPAMC/1.5\r\n\r\n", 5.0)
        return reply.startswith(b"SPAMD/") and b"PONG" in reply


@contextlib.contextmanager
def run_spamd(workdir: Path, port: int = 0, **kw: object) -> Iterator[Spamd]:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        workdir.chmod(0o755)  # spamd's children run as nobody
    spamd = Spamd(workdir, port or free_port(), **kw)  # type: ignore[arg-type]
    spamd.start()
    try:
        yield spamd
    finally:
        spamd.stop()


def have_services() -> bool:
    return all(shutil.which(p) or Path(p).exists() for p in (CLAMD, SPAMD))


def main() -> None:
    """`python -m tests.services [DIR] [--clamd-port N] [--spamd-port N]`: run both for the
    demo until SIGINT/SIGTERM. Ports default to free ones; the lines printed say which."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.services")
    ap.add_argument("workdir", nargs="?", default="var/scanners")
    ap.add_argument("--clamd-port", type=int, default=0)
    ap.add_argument("--spamd-port", type=int, default=0)
    args = ap.parse_args()
    workdir = Path(args.workdir).resolve()
    with run_clamd(workdir / "clamd", port=args.clamd_port) as clamd, \
            run_spamd(workdir / "spamd", port=args.spamd_port) as spamd:
        print(f"clamd  {clamd.address}  (socket {clamd.socket_path})", flush=True)
        print(f"spamd  {spamd.address}", flush=True)
        # Blocked only now, after the daemons started: a signal mask is inherited on exec.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


if __name__ == "__main__":
    main()


class FakeService:
    """A TCP server for faults real daemons won't make on demand. `mode`:
    "hang" reads and never answers, "garbage" answers `reply` whatever was asked, "close"
    hangs up at once, "reset" reads a few bytes then resets the connection. Thread-based,
    so it serves any event loop (tests, a relay thread).
    `connections` counts accepted connections; `closed` those where the client closed (or
    half-closed) its side."""

    def __init__(self, mode: str = "hang", reply: bytes = b"I am not clamd\0") -> None:
        import socketserver
        import threading

        fake = self
        self.mode = mode
        self.reply = reply
        self.connections = 0
        self.closed = 0
        self.received = bytearray()
        self._lock = threading.Condition()
        self._release = threading.Event()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with fake._lock:
                    fake.connections += 1
                sock: socket.socket = self.request
                if fake.mode == "close":
                    return
                if fake.mode == "reset":  # read a little, then RST (SO_LINGER 0)
                    with contextlib.suppress(OSError):
                        sock.recv(16)
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                    return
                if fake.mode == "garbage":
                    # Read the whole request first, as a daemon would: answering and closing
                    # mid-stream resets the connection and the client never reads the
                    # answer. clamd requests end in NUL (INSTREAM: a zero-length chunk);
                    # anything else ends at EOF or after half a second of silence.
                    sock.settimeout(0.5)
                    data = b""
                    with contextlib.suppress(OSError):
                        while chunk := sock.recv(65536):
                            data += chunk
                            if data.startswith(b"zINSTREAM\0"):
                                if data.endswith(b"\0\0\0\0"):
                                    break
                            elif data.startswith(b"z") and data.endswith(b"\0"):
                                break
                    with fake._lock:
                        fake.received += data
                    with contextlib.suppress(OSError):
                        sock.sendall(fake.reply)
                    return
                sock.settimeout(60)
                with contextlib.suppress(OSError):
                    while data := sock.recv(65536):
                        with fake._lock:
                            fake.received += data
                with fake._lock:
                    fake.closed += 1
                    fake._lock.notify_all()
                # A half-close (spamc protocol) is not a reason to answer: keep hanging.
                fake._release.wait(60)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_closed(self, count: int = 1, timeout: float = 10.0) -> bool:
        """True once the client side has hung up `count` hanging connections."""
        with self._lock:
            return self._lock.wait_for(lambda: self.closed >= count, timeout)

    def __enter__(self) -> FakeService:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
