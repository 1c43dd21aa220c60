"""The renderers byte for byte (golden files), their invariants, and what real tools accept.

Regenerate the golden files after an intended change with FLOODGATE_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from blocklist import active
from blocklist.export import (
    FORMATS,
    Entry,
    Item,
    Settings,
    flatten,
    parse_network,
    prepare,
    render,
)
from blocklist.protection import Protection
from relay.store.database import make_engine, upgrade
from relay.store.tables import Allow, Block
from tests.netns import Netns
from tests.support import floodgate, write_config

GOLDEN = Path(__file__).parent / "golden"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
SETTINGS = Settings(now=NOW)


def at(**delta: float) -> datetime:
    return NOW + timedelta(**delta)


ENTRIES = [
    Entry("192.0.2.7", "unknown_rcpt=20", 20.0, at(hours=1)),
    Entry("198.51.100.0/24", "manual: botnet range", 0.0, at(days=7)),
    Entry("198.51.100.9", "virus=3", 15.0, at(days=30)),  # inside, lasts longer: carved out
    Entry("198.51.100.10", "spam=4", 12.0, at(hours=1)),  # inside, shorter: absorbed
    Entry("203.0.113.0/28", "manual", 0.0, at(days=1)),  # contains an allowlisted address
    Entry("192.0.2.99", "spam=5", 15.0, at(hours=2)),  # allowlisted
    Entry("127.0.0.1", "protocol=9", 18.0, at(hours=2)),  # loopback
    Entry("2001:db8:1::/64", "trap=1", 10.0, at(hours=24)),
    Entry("2001:db8:2::/48", "manual", 0.0, at(seconds=90)),
    Entry("2001:db8:2:5::/64", "unknown_rcpt=12", 12.0, at(days=2)),
    Entry("::ffff:192.0.2.50", "dnsbl=zen", 10.0, at(minutes=10, seconds=0.4)),
    Entry("192.0.2.8", "expired", 10.0, at(seconds=-1)),
    Entry("not-an-address", "garbage", 1.0, at(hours=1)),
    Entry("0.0.0.0/0", "everyone", 1.0, at(hours=1)),
    Entry("192.0.2.200", "manual: forever", 0.0, at(days=1000)),
]
PROTECTED = Protection.build(["192.0.2.99", "203.0.113.5"], ["127.0.0.1", "*"],
                             loopback=True).networks()
GOLDEN_FILES = {"nft": "blocklist.nft", "ipset": "blocklist.ipset",
                "iptables": "blocklist.iptables", "plain": "blocklist.txt",
                "json": "blocklist.json"}


def golden_parts(fmt: str) -> dict[str, Path]:
    base = GOLDEN / GOLDEN_FILES[fmt]
    names = {"ipset": ["", "v4", "v6"], "iptables": ["", "v6"]}.get(fmt, [""])
    return {n: base.with_name(f"{base.name}.{n}") if n else base for n in names}


@pytest.mark.parametrize("fmt", FORMATS)
def test_golden(fmt: str) -> None:
    rendered = render(fmt, ENTRIES, PROTECTED, SETTINGS)
    files = golden_parts(fmt)
    assert sorted(rendered.parts) == sorted(files)
    for name, path in files.items():
        if os.environ.get("FLOODGATE_UPDATE_GOLDEN"):
            path.write_bytes(rendered.parts[name])
        assert rendered.parts[name] == path.read_bytes(), f"{path.name} differs"


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_blocks_same_bytes_in_any_order(fmt: str) -> None:
    expected = render(fmt, ENTRIES, PROTECTED, SETTINGS).parts
    shuffled = ENTRIES[:]
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert render(fmt, shuffled, list(reversed(PROTECTED)), SETTINGS).parts == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_protected_networks_never_appear(fmt: str) -> None:
    text = render(fmt, ENTRIES, PROTECTED, SETTINGS).joined().decode()
    for gone in ("192.0.2.99", "203.0.113.5", "203.0.113.0/28", "127.0.0.1", "192.0.2.8",
                 "not-an-address", "0.0.0.0/0"):
        assert not re.search(re.escape(gone) + r"(?![0-9/])", text), gone
    # The /28 around the allowlisted address is still blocked, piece by piece.
    assert re.search(r"203\.0\.113\.4(?![0-9])", text)


def test_block_inside_allowlisted_network_is_dropped() -> None:
    prepared = prepare([Entry("10.1.2.3", "x", 1.0, at(hours=1))], ["10.0.0.0/8"], NOW)
    assert prepared.items == []
    assert prepared.skipped == [("10.1.2.3", "protected (10.0.0.0/8)")]


def test_split_around_allowlist_covers_everything_else() -> None:
    prepared = prepare([Entry("203.0.113.0/24", "x", 1.0, at(hours=1))],
                       ["203.0.113.5", "203.0.113.128/26"], NOW)
    nets = [i.net for i in prepared.items]
    blocked = {a for n in nets for a in n}
    whole = set(ipaddress.ip_network("203.0.113.0/24"))
    allowed = {ipaddress.ip_address("203.0.113.5")} | set(
        ipaddress.ip_network("203.0.113.128/26"))
    assert blocked == whole - allowed


def test_flatten_keeps_the_latest_expiry_for_every_address() -> None:
    """Random nested blocks: pieces never overlap and each address keeps its longest block."""
    rnd = random.Random(7)
    base = int(ipaddress.ip_address("10.0.0.0"))
    for _ in range(30):
        items = []
        for _ in range(rnd.randint(1, 12)):
            plen = rnd.randint(26, 32)
            addr = base + rnd.randrange(256)
            net = ipaddress.ip_network(f"{ipaddress.ip_address(addr)}/{plen}", strict=False)
            items.append(Item(4, int(net.network_address), plen, str(net), "r", 1.0,
                              at(seconds=rnd.randint(1, 50))))
        flat = flatten(sorted(items, key=lambda i: i.key))
        seen: dict[int, datetime] = {}
        for piece in flat:
            for a in piece.net:
                assert int(a) not in seen, f"{a} in two pieces"
                seen[int(a)] = piece.expires
        want: dict[int, datetime] = {}
        for item in items:
            for a in item.net:
                want[int(a)] = max(want.get(int(a), item.expires), item.expires)
        assert seen == want


def test_ipv4_mapped_is_ipv4() -> None:
    assert str(parse_network("::ffff:192.0.2.50")) == "192.0.2.50/32"


def test_nft_check_accepts_the_output() -> None:
    rules = render("nft", ENTRIES, PROTECTED, SETTINGS).parts[""]
    with Netns() as ns:
        proc = ns.run("nft", "-c", "-f", "/dev/stdin", input=rules, check=False)
        assert proc.returncode == 0, proc.stderr.decode()


def test_empty_blocklist_is_valid_everywhere() -> None:
    with Netns() as ns:
        parts = render("nft", [], [], SETTINGS).parts
        ns.run("nft", "-f", "/dev/stdin", input=parts[""])
        parts = render("ipset", [], [], SETTINGS).parts
        ns.run("ipset", "restore", input=parts[""])
    assert render("json", [], [], SETTINGS).parts[""] == b"[]\n"
    assert render("plain", [], [], SETTINGS).parts[""] == b""


def test_ipset_output_loads_into_real_ipset() -> None:
    """Loaded twice (the refill goes through the swap set), rules match the sets."""
    parts = render("ipset", ENTRIES, PROTECTED, SETTINGS).parts
    with Netns() as ns:
        for _ in range(2):
            ns.run("ipset", "restore", input=parts[""])
            ns.run("iptables-restore", "--noflush", input=parts["v4"])
            ns.run("ip6tables-restore", "--noflush", input=parts["v6"])
        listing = ns.out("ipset", "list", "floodgate4")
        assert "192.0.2.7 timeout" in listing
        assert "198.51.100.9 timeout" in listing
        assert "Number of entries: 16" in listing, listing
        assert "2001:db8:2:5::/64 timeout" in ns.out("ipset", "list", "floodgate6")
        assert "floodgate4-new" not in ns.out("ipset", "list", "-n")
        rules = ns.out("iptables", "-S", "FLOODGATE")
        assert rules.count("--match-set floodgate4 src") == 1, rules


def test_active_load_from_the_store(store_url: str) -> None:
    engine = make_engine(store_url)
    upgrade(engine)
    now = datetime.now(UTC)
    rows = [("192.0.2.1", now + timedelta(hours=1)), ("192.0.2.2", now - timedelta(seconds=1)),
            ("2001:db8::/64", now + timedelta(days=1))]
    with engine.begin() as conn:
        conn.execute(insert(Block), [
            {"network": n, "reason": "r", "score": 11.0, "first_seen": now, "last_seen": now,
             "expires": e, "created_at": now, "source": "auto", "level": 1, "node": "t"}
            for n, e in rows])
        conn.execute(insert(Allow), [{"network": "198.51.100.0/24", "reason": "partner",
                                      "created_at": now}])
    entries, allow = active.load(engine, now)
    assert sorted(e.network for e in entries) == ["192.0.2.1", "2001:db8::/64"]
    assert all(e.expires.tzinfo is not None for e in entries)
    assert allow == ["198.51.100.0/24"]
    engine.dispose()


@pytest.mark.parametrize("expired", [0, 10, 1000])
def test_active_load_same_rows_by_scan_or_index(store_url: str, expired: int) -> None:
    """SQLite reads by table scan when most rows are live and by the expiry index when most
    are history; both give exactly the live blocks, with reason and score."""
    engine = make_engine(store_url)
    upgrade(engine)
    now = datetime.now(UTC)
    live = [(f"192.0.2.{i}", now + timedelta(minutes=i)) for i in range(1, 21)]
    old = [(f"10.{i >> 8}.{i & 255}.1", now - timedelta(seconds=i + 1)) for i in range(expired)]
    with engine.begin() as conn:
        conn.execute(insert(Block), [
            {"network": n, "reason": f"r{i}", "score": i / 2,
             "first_seen": now, "last_seen": now, "expires": e, "created_at": now,
             "source": "auto", "level": 1, "node": "t"}
            for i, (n, e) in enumerate(live + old)])
    entries, _ = active.load(engine, now)
    assert sorted(entries) == sorted(Entry(n, f"r{i}", i / 2, e) for i, (n, e) in enumerate(live))
    engine.dispose()


def test_protected_includes_own_addresses_and_loopback() -> None:
    got = Protection.build(["192.0.2.0/24"], ["192.0.2.1", "0.0.0.0", "localhost", "::"],
                           loopback=True, never_block=["198.51.100.1"]).networks()
    assert got == sorted({"192.0.2.0/24", "192.0.2.1", "127.0.0.1", "::1", "127.0.0.0/8",
                          "198.51.100.1"})
    assert "127.0.0.0/8" not in Protection.build([], [], loopback=False).networks()


def test_cli_export_writes_atomically_and_skips_allowlisted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/floodgate.db"
    config = write_config(tmp_path / "fw.toml", store_url=url, port=2525,
                          extra='[blocklist]\nallow = ["192.0.2.99"]\n'
                                '[firewall]\nports = [2525]\noutput = "out/blocks.nft"\n')
    floodgate(config, "db", "upgrade")
    engine = make_engine(url)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(Block), [
            {"network": n, "reason": "r", "score": 11.0, "first_seen": now, "last_seen": now,
             "expires": now + timedelta(hours=1), "created_at": now, "source": "auto",
             "level": 1, "node": "t"} for n in ("192.0.2.7", "192.0.2.99", "2001:db8::/64")])
    engine.dispose()
    out = tmp_path / "out" / "blocks.json"
    floodgate(config, "blocklist", "export", "--format", "json", "-o", str(out))
    data = json.loads(out.read_text())
    assert [r["network"] for r in data] == ["192.0.2.7", "2001:db8::/64"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    plain = floodgate(config, "blocklist", "export", "--format", "plain").stdout
    assert plain == "192.0.2.7\n2001:db8::/64\n"
    proc = floodgate(config, "blocklist", "export", "--format", "ipset", "-o",
                     str(tmp_path / "set"))
    assert (tmp_path / "set.v4").exists() and (tmp_path / "set.v6").exists(), proc.stderr
    nft = floodgate(config, "blocklist", "export").stdout  # default format nft
    assert "tcp dport { 2525 }" in nft and "192.0.2.99" not in nft


def test_firewall_config_errors_name_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.toml", store_url="sqlite:///x.db", port=2525,
                          extra='[firewall]\nports = [25, 70000]\nchian = "X"\n')
    proc = floodgate(config, "check-config", check=False)
    assert proc.returncode == 2
    assert "firewall.ports: Value error" not in proc.stderr
    assert "firewall.ports: port 70000 is out of range" in proc.stderr
    assert "firewall.chian: unknown key" in proc.stderr


def test_nft_binary_is_the_one_tested() -> None:
    """Record the tool versions in the test log: the golden nft syntax targets nftables 1.0."""
    version = subprocess.run(["nft", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("nftables v")
