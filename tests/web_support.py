"""Test helpers for the web server: `floodgate web` as a subprocess next to a relay, both on
one store, and the `[web]` section the tests give them."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx

from blocklist.blocks import GENERATION_KEY
from relay.store.database import make_engine, read_generation
from tests.support import FLOODGATE, ROOT, free_port, wait_until

ADMIN = "example-admin-token"
READ = "example-read-token"
ADMIN_NAME = "config:" + hashlib.sha256(ADMIN.encode()).hexdigest()[:8]

# Scoring fast enough for a test (as tests/test_blocking.py), loopback blockable.
SCORING = """
[scoring]
threshold = 10
interval = "0.2s"
window = "1h"
[blocklist]
block_time = "1h"
protect_loopback = false
allow = ["127.0.0.9"]
"""


def web_section(port: int, public_feeds: bool = False) -> str:
    """The issue's example, verbatim but for the port."""
    return f"""
[web]
listen = "127.0.0.1:{port}"
public_feeds = {"true" if public_feeds else "false"}
refresh = 1
[web.tokens]
"example-admin-token" = "admin"
"example-read-token" = "read"
"""


class WebProcess:
    """`floodgate web` in a subprocess, ready once it logs `web ready`."""

    def __init__(self, config: Path, port: int):
        self.config = config
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = config.with_name(config.stem + "-web.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WebProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([*FLOODGATE, "-c", str(self.config), "web"], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        wait_until(self._ready, 30, "web ready")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"web exited ({self.proc.returncode}):\n{self.log()}")
        return re.search(r" web ready ", self.log()) is not None

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def web_starter() -> Iterator:  # type: ignore[type-arg]
    """For a fixture: yields start(relay_config) -> WebProcess, then stops them all.
    `[web] listen` must be in the config."""
    started: list[WebProcess] = []

    def start(config: Path) -> WebProcess:
        m = re.search(r'^listen = "127\.0\.0\.1:(\d+)"$', config.read_text(), re.M)
        assert m, "no [web] listen in the config"
        web = WebProcess(config, int(m.group(1)))
        started.append(web)
        return web.start()

    yield start
    for web in started:
        web.stop()


def gate_caught_up(relay, store_url: str) -> None:  # type: ignore[no-untyped-def]
    """Wait until the relay's connect gate has loaded the blocks as the store has them now.

    Probing the gate in a loop instead would itself be an offence each time it still
    refuses (`blocked` events), enough to block the host again after an unblock."""
    engine = make_engine(store_url)
    wanted = read_generation(engine, GENERATION_KEY)
    engine.dispose()

    def loaded() -> bool:
        seen = re.findall(r" blocks loaded active=\d+ generation=(\d+)", relay.log())
        return any(int(g) >= wanted for g in seen)

    wait_until(loaded, 15, f"the relay's gate to load blocks generation {wanted}")


def relay_extra(port: int | None = None, public_feeds: bool = False) -> str:
    return SCORING + web_section(port or free_port(), public_feeds)
