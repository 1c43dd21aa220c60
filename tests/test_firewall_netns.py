"""End to end in a network namespace: a block in the store becomes a kernel drop, then expires.

The relay runs inside a namespace the test creates (loopback up, plus two IPv6 addresses on
lo); clients bind to chosen source addresses. A dropped SYN shows as a connect timeout,
which is how "never reaches the relay" is told apart from the relay's own 554 gate.
Kernel objects live only in the namespace; the host firewall is never touched.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import Netns
from tests.support import FLOODGATE, ROOT, RelayProcess, wait_until, write_config

PORT = 2525
BLOCKED = {4: "127.0.0.5", 6: "fd00:0:0:5::1"}
PASSING = {4: "127.0.0.6", 6: "fd00:0:0:6::1"}
NETWORK = {4: "127.0.0.5", 6: "fd00:0:0:5::/64"}  # IPv6 hosts are blocked by their /64
SERVER = {4: "127.0.0.1", 6: "::1"}
BLOCK_TIME = "15s"  # outlasts two CLI runs and the probes on a loaded machine


class NetnsRelay(RelayProcess):
    """`floodgate serve` started with `ip netns exec`."""

    def __init__(self, config: Path, port: int, ns: Netns):
        super().__init__(config, port)
        self.ns = ns

    def start(self, wait: bool = True) -> NetnsRelay:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([*self.ns.prefix(), *FLOODGATE, "-c", str(self.config),
                                      "serve"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        if wait:
            self.wait_for_log(r" ready ")
        return self


class Probe:
    """tests/netns_probe.py running inside the namespace."""

    def __init__(self, ns: Netns):
        self.proc = subprocess.Popen(
            [*ns.prefix(), sys.executable, str(ROOT / "tests" / "netns_probe.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def __call__(self, source: str, family: int, timeout: float = 1.0) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{source} {SERVER[family]} {PORT} {timeout}\n")
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


class Scene:
    def __init__(self, ns: Netns, config: Path, relay: NetnsRelay, probe: Probe):
        self.ns, self.config, self.relay, self.probe = ns, config, relay, probe

    def floodgate(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.ns.prefix(), *FLOODGATE, "-c", str(self.config), *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"floodgate {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    with Netns() as ns:
        for addr in (BLOCKED[6], PASSING[6]):
            ns.run("ip", "-6", "addr", "add", f"{addr}/128", "dev", "lo", "nodad")
        config = write_config(
            tmp_path / "relay.toml", store_url=f"sqlite:///{tmp_path}/floodgate.db", port=PORT,
            listen=[f"127.0.0.1:{PORT}", f"[::1]:{PORT}"],
            extra=f"[scoring]\nenabled = false\n[blocklist]\nprotect_loopback = false\n"
                  f"[firewall]\nports = [{PORT}]\n")
        relay = NetnsRelay(config, PORT, ns)
        probe: Probe | None = None
        try:
            scene = Scene(ns, config, relay, Probe(ns))
            probe = scene.probe
            scene.floodgate("db", "upgrade")
            relay.start()
            yield scene
        finally:
            if probe is not None:
                probe.close()
            relay.stop()


def banner(answer: str) -> bool:
    return answer.startswith("220")


def kernel_entries(scene: Scene, fmt: str, family: int) -> str:
    if fmt == "nft":
        name = "blocked4" if family == 4 else "blocked6"
        return scene.ns.out("nft", "list", "set", "inet", "floodgate", name)
    name = "floodgate4" if family == 4 else "floodgate6"
    return scene.ns.out("ipset", "list", name).split("Members:")[1]


@pytest.mark.parametrize(("fmt", "family"), [("nft", 4), ("nft", 6), ("ipset", 4),
                                              ("ipset", 6)])
def test_block_drops_then_kernel_expires_it(scene: Scene, fmt: str, family: int) -> None:
    bad, good = BLOCKED[family], PASSING[family]
    assert banner(scene.probe(bad, family)), "before the block, everyone gets the greeting"

    scene.floodgate("block", "add", NETWORK[family], "--for", BLOCK_TIME, "--reason", "test")
    out = scene.floodgate("blocklist", "apply", "--format", fmt).stdout
    assert "applied 1 networks" in out, out
    assert NETWORK[family].split("/")[0] in kernel_entries(scene, fmt, family)

    assert scene.probe(bad, family) == "timeout", "the SYN from the blocked host is dropped"
    assert banner(scene.probe(good, family)), "its neighbour still gets through"

    # Nothing re-applies from here on: only the kernel's own timeout can let it back in.
    wait_until(lambda: banner(scene.probe(bad, family, timeout=0.5)), timeout=60,
               what=f"{bad} let in again after the kernel expired its entry")
    assert NETWORK[family].split("/")[0] not in kernel_entries(scene, fmt, family)


def test_iptables_without_ipset_blocks_and_reapply_lifts(scene: Scene) -> None:
    """Plain iptables has no timeouts: the block lifts when the next apply drops it."""
    scene.floodgate("block", "add", "127.0.0.5", "--for", "1h", "--reason", "test")
    for _ in range(2):  # idempotent: the second apply changes nothing
        scene.floodgate("blocklist", "apply", "--format", "iptables")
    assert scene.probe("127.0.0.5", 4) == "timeout"
    assert banner(scene.probe("127.0.0.6", 4))
    rules = scene.ns.out("iptables", "-S")
    assert rules.count("-j FLOODGATE") == 1, rules
    assert rules.count("-s 127.0.0.5/32 -j DROP") == 1, rules

    scene.floodgate("block", "remove", "127.0.0.5")
    scene.floodgate("blocklist", "apply", "--format", "iptables")
    assert banner(scene.probe("127.0.0.5", 4))


def test_apply_is_idempotent_and_a_failure_keeps_the_old_rules(scene: Scene) -> None:
    scene.floodgate("block", "add", "127.0.0.5", "--for", "1h", "--reason", "test")
    scene.floodgate("blocklist", "apply")
    first = scene.ns.out("nft", "list", "table", "inet", "floodgate")
    scene.floodgate("blocklist", "apply")
    assert scene.ns.out("nft", "list", "tables").count("floodgate") == 1
    assert "127.0.0.5" in first

    # A ruleset the kernel refuses: nothing changes and the error names the tool.
    bad = scene.ns.run(sys.executable, "-c",
                       "from blocklist.apply import apply_nft\n"
                       "apply_nft(b'table inet floodgate { set x { type nonsense; } }')",
                       check=False)
    assert bad.returncode != 0 and b"nft -f failed" in bad.stderr
    assert b"previous rules are still in place" in bad.stderr
    assert "127.0.0.5" in scene.ns.out("nft", "list", "set", "inet", "floodgate", "blocked4")
    assert scene.probe("127.0.0.5", 4) == "timeout"

    # ipset: a set that exists with other parameters makes the load fail before any change.
    scene.floodgate("blocklist", "apply", "--format", "ipset")
    scene.ns.run("ipset", "create", "floodgate4-new", "hash:ip", "family", "inet")
    failed = scene.floodgate("blocklist", "apply", "--format", "ipset", check=False)
    assert failed.returncode == 1
    assert "ipset restore failed" in failed.stderr, failed.stderr
    assert "127.0.0.5" in kernel_entries(scene, "ipset", 4)


def test_watch_applies_changes_from_the_store(scene: Scene, tmp_path: Path) -> None:
    out = tmp_path / "blocks.txt"
    watch = subprocess.Popen(
        [*scene.ns.prefix(), *FLOODGATE, "-c", str(scene.config), "blocklist", "watch",
         "--interval", "0.2", "--apply", "--format", "nft", "-o", str(out)],
        stdout=(tmp_path / "watch.log").open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_until(out.exists, what="the first export")
        scene.floodgate("block", "add", "127.0.0.5", "--for", "1h", "--reason", "test")
        wait_until(lambda: "127.0.0.5" in out.read_text(), what="the file to follow the store")
        wait_until(lambda: scene.probe("127.0.0.5", 4, timeout=0.5) == "timeout",
                   what="the kernel to follow the store")
        scene.floodgate("block", "remove", "127.0.0.5")
        wait_until(lambda: banner(scene.probe("127.0.0.5", 4, timeout=0.5)),
                   what="the removal to reach the kernel")
    finally:
        watch.terminate()
        watch.wait(10)
