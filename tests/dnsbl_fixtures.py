"""A private rbldnsd serving fixtures/dnsbl/, and a UDP "nameserver" that never answers.

Every `<zone>.<dataset type>` file in fixtures/dnsbl/ becomes part of `<zone>`
(`zen.example.ip4set` + `zen.example.ip6trie` -> zone zen.example). The daemon logs every
query unbuffered, so tests can count what reached the wire. Readiness is polled by querying
the daemon, never slept for.

    with run_rbldnsd(tmp) as rbl:
        DnsblFilter(zones, nameserver=rbl.nameserver)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

ROOT = Path(__file__).resolve().parent.parent
ZONES = ROOT / "fixtures" / "dnsbl"
RBLDNSD = os.environ.get("FLOODGATE_RBLDNSD", "/usr/sbin/rbldnsd")
STARTUP_TIMEOUT = 30.0
POLL = 0.05


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> str | None:
    """rbldnsd started as root drops to a user (default `rbldns`, which may not exist)."""
    if os.geteuid() != 0:
        return None
    for user in ("rbldns", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return user
    return None


@dataclass
class Rbldnsd:
    workdir: Path
    port: int
    user: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "queries.log"

    @property
    def zones(self) -> list[str]:
        """`zone:type:file` specs, one per fixture file, copied into the workdir."""
        return [f"{p.stem}:{p.suffix[1:]}:{p.name}" for p in sorted(ZONES.iterdir())
                if p.is_file() and p.suffix]

    def start(self) -> None:
        # The daemon reads zones and writes its log as `user`: give it its own readable copy.
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        for p in ZONES.iterdir():
            shutil.copy(p, self.workdir / p.name)
            (self.workdir / p.name).chmod(0o644)
        self.log.touch()
        cmd = [RBLDNSD, "-n", "-b", f"127.0.0.1/{self.port}", "-w", str(self.workdir),
               "-l", f"+{self.log.name}", "-t", "300"]
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.log, entry.pw_uid, entry.pw_gid)
            cmd += ["-u", self.user]
        out = open(self.workdir / "rbldnsd.out", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen([*cmd, *self.zones], stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        out.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"rbldnsd exited with {self.proc.returncode}:\n"
                                   + (self.workdir / "rbldnsd.out").read_text(errors="replace"))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rbldnsd not answering on {self.nameserver}")
            time.sleep(POLL)  # polling interval, not synchronisation: ready() decides

    def ready(self) -> bool:
        """Answers a listed address: the zones are loaded, not just the socket bound."""
        return self.ask("2.0.0.127.zen.example") == ["127.0.0.2"]

    def ask(self, name: str, timeout: float = 0.2) -> list[str] | None:
        """A direct A query (no filter, no cache); None when it gets no answer."""
        try:
            reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1",
                                  port=self.port, timeout=timeout)
        except (dns.exception.Timeout, OSError):
            return None
        if reply.rcode() != dns.rcode.NOERROR:
            return []
        return sorted(r.address for rrset in reply.answer for r in rrset)

    def queries(self, name: str) -> int:
        """How many queries for `name` rbldnsd has logged."""
        needle = f" {name.rstrip('.')} A IN:"
        return sum(needle in line for line in self.log.read_text().splitlines())

    def barrier(self) -> None:
        """rbldnsd answers (and logs) queries one at a time: once a fresh query is logged,
        every query sent before it is logged too, so counts are complete, not racy."""
        name = f"{time.monotonic_ns()}.barrier.zen.example"
        self.ask(name, timeout=5.0)
        if self.queries(name) != 1:
            raise RuntimeError("rbldnsd did not log the barrier query")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


@contextlib.contextmanager
def run_rbldnsd(workdir: Path) -> Iterator[Rbldnsd]:
    last: Exception | None = None
    for _ in range(3):  # the free port may be taken between probing and binding
        server = Rbldnsd(Path(workdir), free_udp_port(), _run_as())
        try:
            server.start()
        except RuntimeError as e:
            last = e
            continue
        try:
            yield server
        finally:
            server.stop()
        return
    raise RuntimeError(f"rbldnsd would not start: {last}")


@contextlib.contextmanager
def silent_nameserver() -> Iterator[str]:
    """A bound UDP socket nobody reads: queries vanish, as with a dead or filtered server."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="session")
def rbldnsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rbldnsd]:
    with run_rbldnsd(tmp_path_factory.mktemp("rbldnsd")) as server:
        yield server
