"""A throw-away network namespace for firewall tests: `ip netns add`, loopback up, deleted after.

Commands run inside it with `ip netns exec`; the kernel objects (nft tables, ipsets,
iptables chains) live and die with the namespace, so the host's firewall is never touched.
"""

from __future__ import annotations

import os
import subprocess
import uuid


class Netns:
    def __init__(self) -> None:
        self.name = f"fgtest-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def __enter__(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self.run("ip", "link", "set", "lo", "up")
        return self

    def __exit__(self, *_: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, *cmd: str, input: bytes | None = None,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run([*self.prefix(), *cmd], input=input, capture_output=True,
                              timeout=120, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}) in {self.name}:\n"
                                 f"{proc.stdout.decode(errors='replace')}\n"
                                 f"{proc.stderr.decode(errors='replace')}")
        return proc

    def out(self, *cmd: str) -> str:
        return self.run(*cmd).stdout.decode()
