"""A CPU quota for the relay under test: a cgroup of its own (v1 `cpu` or v2 `cpu.max`).

Why: on a two-core machine the load generator needs most of a core of its own, so
`--workers 2` has no idle core to scale into and its ratio against one worker measures the
machine, not the relay. Held to half a core per worker (the generator keeps the rest),
one worker against two says whether the relay scales with the CPU it is given: whether
SO_REUSEPORT spreads the connections and nothing in the store or the gate serialises the
workers. The relay's processes join the group before `exec` (`preexec`), so the workers
and their event writers are in it too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

V1 = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class CpuQuota:
    def __init__(self, name: str, cores: float):
        self.cores = cores
        if (V1 / "cpu.cfs_quota_us").exists():
            self.path = V1 / name
            self.files = {"cpu.cfs_period_us": str(PERIOD_US),
                          "cpu.cfs_quota_us": str(int(cores * PERIOD_US))}
        else:
            self.path = V2 / name
            self.files = {"cpu.max": f"{int(cores * PERIOD_US)} {PERIOD_US}"}

    @staticmethod
    def available() -> str | None:
        """None if quotas can be set here, else why not."""
        if os.geteuid() != 0:
            return "needs root"
        if (V1 / "cpu.cfs_quota_us").exists():
            return None
        controllers = V2 / "cgroup.subtree_control"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            return None
        return "no cgroup cpu controller"

    def create(self) -> CpuQuota:
        self.path.mkdir(exist_ok=True)
        for name, value in self.files.items():
            (self.path / name).write_text(value)
        return self

    def preexec(self) -> None:
        """In the child, before exec: join the group (its descendants inherit it)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self, timeout: float = 30.0) -> None:
        """Once every process in it has exited (a relay's children outlive it briefly)."""
        deadline = time.monotonic() + timeout
        while self.path.exists():
            if not (self.path / "cgroup.procs").read_text().split():
                self.path.rmdir()
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes left in {self.path}")
            time.sleep(0.1)
