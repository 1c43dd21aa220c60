"""Processes the benchmark starts: the relay (`floodgate serve`), its configuration, the bare
aiosmtpd baselines, `floodgate sink`; each stopped with SIGTERM by its own pid."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from scripts.benchlib.cpuquota import CpuQuota

ROOT = Path(__file__).resolve().parent.parent.parent
PY = sys.executable
FLOODGATE = [PY, "-m", "relay.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args}: port {port} not open after {timeout}s:\n{tail(log)}")


def wait_log(log: Path, pattern: str, proc: subprocess.Popen[bytes], count: int = 1,
             timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if len(re.findall(pattern, text)) >= count:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}:\n{tail(log)}")
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args}: no {pattern!r} in {log} after {timeout}s:\n{tail(log)}")


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def relay_config(path: Path, *, port: int, workdir: Path, store_url: str = "",
                 scoring: bool = False, allow: list[str] | None = None,
                 clamd: str | None = None, spamd: str | None = None,
                 clamav_cache: bool = True, spam_cache: bool = True,
                 delivery: bool = False, sink_port: int = 0, metrics_port: int = 0,
                 max_message_size: int = 26_214_400, clamav_concurrency: int = 4,
                 spamd_concurrency: int = 2, event_buffer: int = 0,
                 extra: str = "") -> Path:
    """The demo configuration (fixtures/demo.toml) adapted for load: its own port, store and
    spool under `workdir`, loopback not protected (scenario 2 blocks a 127/8 source), scoring
    off unless asked (it would block the load generator's addresses within a minute)."""
    store_url = store_url or f"sqlite:///{workdir / 'floodgate.db'}"
    hop = f"127.0.0.1:{sink_port or 2600}"
    lines = [f"""[relay]
node = "bench"
hostname = "mx.bench.test"
listen = ["127.0.0.1:{port}"]
max_message_size = {max_message_size}
max_recipients = 100
spool_dir = "{workdir / 'spool'}"
recipient_delimiter = "+"
idle_timeout = "600s"
shutdown_grace = "5s"

[store]
url = "{store_url}"
{f"event_buffer = {event_buffer}" if event_buffer else ""}

[domains."example.org"]
next_hop = "{hop}"
[domains."example.net"]
next_hop = "{hop}"

[scoring]
enabled = {str(scoring).lower()}
threshold = 10
window = "24h"
traps = ["trap@example.org"]

[blocklist]
block_time = "1h"
protect_loopback = false
allow = [{", ".join(f'"{a}"' for a in allow or [])}]

[delivery]
enabled = {str(delivery).lower()}
min_backoff = "5s"
"""]
    if clamd:
        lines.append(f"""[clamav]
address = "{clamd}"
on_error = "tempfail"
concurrency = {clamav_concurrency}
max_size = 0
cache.enabled = {str(clamav_cache).lower()}
""")
    if spamd:
        lines.append(f"""[spamassassin]
address = "{spamd}"
tag_score = 5
reject_score = 10
concurrency = {spamd_concurrency}
cache.enabled = {str(spam_cache).lower()}
""")
    if metrics_port:
        lines.append(f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    if extra:  # more tables (only ones not written above)
        lines.append(extra)
    path.write_text("\n".join(lines))
    return path


class Relay:
    """`floodgate serve` (optionally `--workers N`, optionally on the asyncio loop)."""

    def __init__(self, config: Path, port: int, *, workers: int = 1, uvloop: bool = True,
                 quota: CpuQuota | None = None):
        self.config = config
        self.port = port
        self.workers = workers
        self.uvloop = uvloop
        self.quota = quota  # created; every process of the relay runs in it
        self.log = config.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        done = subprocess.run([*FLOODGATE, "-c", str(self.config), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"floodgate {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def start(self) -> Relay:
        env = dict(os.environ)
        if not self.uvloop:
            env["FLOODGATE_EVENT_LOOP"] = "asyncio"
        cmd = [*FLOODGATE, "-c", str(self.config), "serve"]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env=env,
                                         preexec_fn=self.quota.preexec if self.quota else None)
        wait_log(self.log, r" INFO floodgate\.serve ready ", self.proc, count=self.workers)
        return self

    @property
    def pids(self) -> list[int]:
        """Every process of the relay: `floodgate serve` and its descendants (the workers
        under a supervisor, each process's event writer)."""
        assert self.proc is not None
        from scripts.benchlib.procstat import tree

        return tree(self.proc.pid)

    def stop(self) -> None:
        stop(self.proc)
        if self.quota is not None:
            self.quota.remove()


class Baseline:
    """A bare aiosmtpd server (scripts/benchlib/baseline.py)."""

    def __init__(self, workdir: Path, mode: str = "rcpt", uvloop: bool = True):
        self.port = free_port()
        self.log = workdir / f"baseline-{mode}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [PY, "-m", "scripts.benchlib.baseline", "--port", str(self.port), "--mode", mode,
                 "--loop", "uvloop" if uvloop else "asyncio"],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_port(self.port, self.proc, self.log)

    def stop(self) -> None:
        stop(self.proc)


class Sink:
    """`floodgate sink`: the domains' next hop, filing what it receives."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.dir = workdir / "delivered"
        self.log = workdir / "sink.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*FLOODGATE, "sink", "--listen", f"127.0.0.1:{self.port}", "--dir", str(self.dir)],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_port(self.port, self.proc, self.log)

    def count(self) -> int:
        try:
            return sum(1 for p in self.dir.iterdir() if p.suffix == ".eml")
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        stop(self.proc)
