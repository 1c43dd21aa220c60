"""Load rendered rules into the kernel; each step is atomic or checked before it runs.

nft: one `nft -f` transaction. ipset: all swap sets are filled before any swap, after the
matching iptables rules passed `iptables-restore --test`. iptables: `--test` for both
families first, then the real loads. A failure raises ApplyError naming the tool and its
message; what the kernel had before stays.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import replace

from blocklist.export import Entry, Rendered, Settings, render

TOOLS = {"nft": "nftables", "ipset": "ipset", "iptables": "iptables",
         "iptables-restore": "iptables", "ip6tables": "iptables",
         "ip6tables-restore": "iptables"}
FAMILY = {"": "iptables", "v4": "iptables", "v6": "ip6tables"}


class ApplyError(Exception):
    """The kernel refused the rules (or a tool is missing); the message says which and why."""


def run(cmd: list[str], data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a firewall tool; missing binaries become ApplyError, exit codes are the caller's."""
    if shutil.which(cmd[0]) is None:
        raise ApplyError(f"{cmd[0]} not found: install the {TOOLS.get(cmd[0], cmd[0])} package")
    return subprocess.run(cmd, input=data, capture_output=True, timeout=120, check=False)


def _checked(cmd: list[str], data: bytes | None = None, what: str = "") -> None:
    proc = run(cmd, data)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).decode(errors="replace").strip()
        raise ApplyError(f"{what or cmd[0]} failed (exit {proc.returncode}): {msg}; "
                         "the previous rules are still in place")


def apply_nft(rules: bytes) -> None:
    """`nft -f`: the file deletes and recreates our table in one transaction."""
    with tempfile.NamedTemporaryFile(prefix="floodgate-", suffix=".nft") as fh:
        fh.write(rules)
        fh.flush()
        _checked(["nft", "-f", fh.name], what="nft -f")


def check_nft(rules: bytes) -> None:
    """`nft -c -f`: parse and validate against the kernel without changing anything."""
    with tempfile.NamedTemporaryFile(prefix="floodgate-", suffix=".nft") as fh:
        fh.write(rules)
        fh.flush()
        _checked(["nft", "-c", "-f", fh.name], what="nft -c -f")


def has_jump(tool: str, s: Settings) -> bool:
    """Is the hook -> chain jump already there (`iptables -C`)?"""
    return run([tool, "-w", "-C", s.hook, "-j", s.chain]).returncode == 0


def _restore_rules(parts: dict[str, bytes], names: list[str], s: Settings,
                   before: Callable[[], None] | None = None) -> None:
    """Test every family's rules, then (after `before`) load them for real."""
    for name in names:
        _checked([f"{FAMILY[name]}-restore", "-w", "--test", "--noflush"], parts[name],
                 what=f"{FAMILY[name]}-restore --test")
    if before is not None:
        before()
    for name in names:
        _checked([f"{FAMILY[name]}-restore", "-w", "--noflush"], parts[name],
                 what=f"{FAMILY[name]}-restore")


def _with_jumps(s: Settings) -> Settings:
    """Add the hook -> chain jump only for the families that lack it: reloads never repeat it."""
    return replace(s, jump4=not has_jump("iptables", s), jump6=not has_jump("ip6tables", s))


def apply(fmt: str, entries: list[Entry], protect: list[str], s: Settings) -> Rendered:
    """Render `entries` in `fmt` and load it; returns what was loaded."""
    if fmt == "nft":
        rendered = render(fmt, entries, protect, s)
        apply_nft(rendered.parts[""])
        return rendered
    if fmt == "ipset":
        rendered = render(fmt, entries, protect, _with_jumps(s))
        sets = rendered.parts[""]
        # The rules refer to the live sets, which must exist for --test to pass.
        creates = b"".join(line + b"\n" for line in sets.splitlines()
                           if line.startswith(b"create ") and b"-new " not in line)
        _checked(["ipset", "restore"], creates, what="ipset restore (create)")

        def load_sets() -> None:
            proc = run(["ipset", "restore"], sets)
            if proc.returncode != 0:
                for name in (s.ipset4, s.ipset6):
                    run(["ipset", "destroy", f"{name}-new"])
                msg = proc.stderr.decode(errors="replace").strip()
                raise ApplyError(f"ipset restore failed (exit {proc.returncode}): {msg}; "
                                 "the previous sets are still in place")

        _restore_rules(rendered.parts, ["v4", "v6"], s, before=load_sets)
        return rendered
    if fmt == "iptables":
        rendered = render(fmt, entries, protect, _with_jumps(s))
        _restore_rules(rendered.parts, ["", "v6"], s)
        return rendered
    raise ApplyError(f"cannot apply format {fmt!r}: use nft, ipset or iptables")
