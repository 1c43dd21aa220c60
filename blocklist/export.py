"""Pure renderers: active blocks in, firewall input out (nft, ipset, iptables, plain, json).

No subprocess and no database here, so every format is tested byte for byte against golden
files. Output is sorted: the same blocks and the same `now` give the same bytes.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FORMATS = ("nft", "ipset", "iptables", "plain", "json")
KERNEL_FORMATS = ("nft", "ipset", "iptables")
BITS = {4: 32, 6: 128}
IPSET_MAX_TIMEOUT = 2_147_483  # seconds; ipset refuses longer per-entry timeouts


class Entry(NamedTuple):
    """One block as the store has it (a tuple: 100k of them are built per export)."""

    network: str
    reason: str
    score: float
    expires: datetime  # tz-aware UTC


@dataclass(frozen=True, slots=True)
class Settings:
    """Names and limits the renderers need; `now` makes remaining times reproducible."""

    now: datetime
    table: str = "floodgate"
    set4: str = "blocked4"
    set6: str = "blocked6"
    priority: int = -10
    ipset4: str = "floodgate4"
    ipset6: str = "floodgate6"
    ipset_maxelem: int = 1_048_576
    chain: str = "FLOODGATE"
    hook: str = "INPUT"
    ports: tuple[int, ...] = (25, 465, 587)
    max_timeout: int = 365 * 86_400
    jump4: bool = False  # iptables rules: also insert the hook -> chain jump (IPv4)
    jump6: bool = False  # the same for ip6tables


class Item(NamedTuple):
    """A parsed, allowlist-checked block; the network as integers, for speed at 100k rows."""

    version: int
    addr: int  # network address
    plen: int
    text: str  # as shown: `192.0.2.7`, `2001:db8::/64`
    reason: str
    score: float
    expires: datetime

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.version, self.addr, self.plen)

    @property
    def end(self) -> int:
        return self.addr | ((1 << (BITS[self.version] - self.plen)) - 1)

    @property
    def net(self) -> Network:
        return ipaddress.ip_network((self.addr, self.plen)) if self.version == 4 \
            else ipaddress.IPv6Network((self.addr, self.plen))


@dataclass(frozen=True, slots=True)
class Prepared:
    """What may be exported, sorted, and what was left out with the reason why."""

    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Rendered:
    """One or more files: `parts[""]` is the main one; others are e.g. `v4`/`v6` rules."""

    format: str
    parts: dict[str, bytes]
    count: int
    skipped: list[tuple[str, str]]

    def joined(self) -> bytes:
        """All parts for a terminal: each extra part under a `# ==> name <==` comment line."""
        chunks = [self.parts[""]]
        for name, data in self.parts.items():
            if name:
                chunks.append(f"# ==> {name} <==\n".encode() + data)
        return b"".join(chunks)


def utc(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything here is UTC."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def parse(text: str) -> tuple[int, int, int, str | None]:
    """(version, network address, prefix length) via inet_pton: ipaddress is 10x slower.

    Host bits are cleared (like strict=False); IPv4-mapped IPv6 becomes IPv4. The fourth
    value is the text when it is already canonical (a bare IPv4 address: inet_pton refuses
    leading zeros), else None.
    """
    addr, slash, plen_text = text.strip().partition("/")
    try:
        if ":" in addr:
            version, raw = 6, socket.inet_pton(socket.AF_INET6, addr)
        else:
            version, raw = 4, socket.inet_pton(socket.AF_INET, addr)
    except OSError:
        raise ValueError(f"{text!r} is not an address or network") from None
    bits = BITS[version]
    if slash and not (plen_text.isdigit() and int(plen_text) <= bits):
        raise ValueError(f"{text!r}: bad prefix length")
    plen = int(plen_text) if slash else bits
    n = int.from_bytes(raw, "big") & ~((1 << (bits - plen)) - 1)
    if version == 6 and plen >= 96 and n >> 32 == 0xFFFF:
        return 4, n & 0xFFFFFFFF, plen - 96, None
    return version, n, plen, addr if version == 4 and not slash else None


def parse_network(text: str) -> Network:
    """A network from a store or config string; IPv4-mapped IPv6 becomes IPv4."""
    version, addr, plen, _ = parse(text)
    return Item(version, addr, plen, "", "", 0.0, datetime.min).net


def show_parts(version: int, addr: int, plen: int) -> str:
    """Single addresses bare (`192.0.2.7`), networks with their prefix."""
    if version == 4:
        text = socket.inet_ntop(socket.AF_INET, addr.to_bytes(4, "big"))
    elif addr >> 32 in (0, 0xFFFF):  # libc would print these in dotted form
        text = str(ipaddress.IPv6Address(addr))
    else:
        text = socket.inet_ntop(socket.AF_INET6, addr.to_bytes(16, "big"))
    return text if plen == BITS[version] else f"{text}/{plen}"


def show(net: Network) -> str:
    return show_parts(net.version, int(net.network_address), net.prefixlen)


def cidr(item: Item) -> str:
    """Always with the prefix length, as iptables prints it."""
    return item.text + (f"/{item.plen}" if item.plen == BITS[item.version] else "")


def exclude(net: Network, holes: Sequence[Network]) -> list[Network]:
    """`net` minus disjoint sub-networks `holes`, as few CIDR blocks as halving gives."""
    inside = [h for h in holes if h.version == net.version and h.subnet_of(net)]  # type: ignore[arg-type]
    if not inside:
        return [net]
    if any(h.prefixlen <= net.prefixlen for h in inside):
        return []
    out: list[Network] = []
    for half in net.subnets(1):
        out.extend(exclude(half, inside))
    return out


def prepare(entries: Iterable[Entry], protected: Iterable[str], now: datetime) -> Prepared:
    """Drop expired and unusable entries and carve out protected (allowlisted) networks.

    A block that merely contains a protected network is split around it rather than dropped,
    so a /24 with one allowlisted partner still blocks the other 255 addresses.
    """
    skipped: list[tuple[str, str]] = []
    guards: dict[int, list[Network]] = {4: [], 6: []}
    for text in protected:
        try:
            net = parse_network(text)
        except ValueError:
            skipped.append((text, "protected entry is not an address or network"))
            continue
        guards[net.version].append(net)
    # Disjoint protected ranges, sorted: one bisect per block finds what it overlaps.
    guard = {v: list(ipaddress.collapse_addresses(n)) for v, n in guards.items()}  # type: ignore[arg-type]
    starts = {v: [int(g.network_address) for g in nets] for v, nets in guard.items()}
    ends = {v: [int(g.broadcast_address) for g in nets] for v, nets in guard.items()}
    items: list[Item] = []
    now = utc(now)
    # 100,000 rows per export: the common case (a bare IPv4 address that overlaps nothing
    # protected) runs inline, with C calls only; everything else goes through parse().
    new, pton, from_bytes, af4 = tuple.__new__, socket.inet_pton, int.from_bytes, socket.AF_INET
    starts4, ends4 = starts[4], ends[4]
    for network, reason, score, expires in entries:
        if expires.tzinfo is not UTC:
            expires = utc(expires)
        if expires <= now:
            continue
        if "/" not in network and ":" not in network:
            try:
                addr = from_bytes(pton(af4, network), "big")
            except OSError:
                pass  # parse() below strips, retries and says why
            else:
                k = bisect_right(starts4, addr) - 1
                if k < 0 or ends4[k] < addr:
                    items.append(new(Item, (4, addr, 32, network, reason, score, expires)))
                    continue
        try:
            version, addr, plen, text = parse(network)
        except ValueError:
            skipped.append((network, "not an address or network"))
            continue
        if plen == 0:
            skipped.append((network, "would block every address"))
            continue
        item = Item(version, addr, plen, text or show_parts(version, addr, plen), reason,
                    score, expires)
        last = addr | ((1 << (BITS[version] - plen)) - 1)
        k = bisect_right(starts[version], last) - 1
        if k < 0 or ends[version][k] < addr:
            items.append(item)  # overlaps nothing protected
            continue
        if starts[version][k] <= addr and ends[version][k] >= last:
            skipped.append((item.text, f"protected ({show(guard[version][k])})"))
            continue
        holes = guard[version][bisect_left(starts[version], addr):k + 1]
        skipped.append((item.text, "split around protected " + ", ".join(map(show, holes))))
        items.extend(item._replace(addr=int(p.network_address), plen=p.prefixlen, text=show(p))
                     for p in exclude(item.net, holes))
    items.sort()
    return Prepared(items, skipped)


def flatten(items: list[Item]) -> list[Item]:
    """Non-overlapping pieces, each address keeping the latest expiry that covers it.

    nft interval sets refuse overlapping elements, so a /64 block with a /128 inside it that
    lasts longer becomes the /64 minus the /128, plus the /128 with its own timeout.
    """
    out: list[Item] = []
    nested = False
    for version in (4, 6):
        nodes = [i for i in items if i.version == version]  # prepare() sorted them
        flat = _flatten_family(nodes)
        nested = nested or flat is not None
        out.extend(nodes if flat is None else flat)
    if not nested:
        return items
    out.sort()
    return out


def _flatten_family(nodes: list[Item]) -> list[Item] | None:
    """The flattened pieces, or None when nothing is nested (the common case, one pass)."""
    if not nodes:
        return None
    bits = BITS[nodes[0].version]
    ends = [i.addr | ((1 << (bits - i.plen)) - 1) for i in nodes]
    if all(a < b.addr for a, b in zip(ends, nodes[1:], strict=False)):
        return None
    n = len(nodes)
    eff: list[datetime] = [nodes[0].expires] * n if n else []
    sig_parent: list[int] = [-1] * n  # nearest significant ancestor
    significant = [False] * n
    holes: dict[int, list[Network]] = {}
    stack: list[int] = []
    for i, item in enumerate(nodes):
        while stack and item.addr > ends[stack[-1]]:
            stack.pop()
        parent = stack[-1] if stack else -1
        if parent < 0:
            eff[i], significant[i] = item.expires, True
        else:
            eff[i] = max(item.expires, eff[parent])
            significant[i] = item.expires > eff[parent]
            sig_parent[i] = parent if significant[parent] else sig_parent[parent]
            if significant[i]:
                holes.setdefault(sig_parent[i], []).append(item.net)
        stack.append(i)
    out: list[Item] = []
    for i, item in enumerate(nodes):
        if not significant[i]:
            continue
        if i in holes:
            out.extend(item._replace(addr=int(p.network_address), plen=p.prefixlen,
                                     text=show(p))
                       for p in exclude(item.net, holes[i]))
        else:
            out.append(item)
    return out


def remaining(expires: datetime, now: datetime, cap: int) -> int:
    """Whole seconds left, at least 1 (the entry is still active), at most `cap`."""
    left = expires - now
    secs = left.days * 86_400 + left.seconds + (1 if left.microseconds else 0)
    return 1 if secs < 1 else cap if secs > cap else secs


def render_plain(items: list[Item]) -> bytes:
    return "".join(f"{i.text}\n" for i in items).encode()


def render_json(items: list[Item]) -> bytes:
    """A list of {network, reason, score, expires}, one object a line, keys sorted.

    Reasons and scores repeat across an outbreak's blocks: each is encoded once.
    """
    reasons: dict[str, str] = {}
    scores: dict[float, str] = {}
    rows = []
    for i in items:
        reason = reasons.get(i.reason)
        if reason is None:
            reason = reasons[i.reason] = json.dumps(i.reason, ensure_ascii=False)
        score = scores.get(i.score)
        if score is None:
            score = scores[i.score] = json.dumps(float(i.score))
        rows.append(f'  {{"expires": "{i.expires:%Y-%m-%dT%H:%M:%S}Z", "network": "{i.text}", '
                    f'"reason": {reason}, "score": {score}}}')
    return ("[\n" + ",\n".join(rows) + "\n]\n" if rows else "[]\n").encode()


def render_nft(items: list[Item], s: Settings) -> bytes:
    """One `nft -f` transaction: create-if-missing, delete, recreate, so nothing is half done."""
    now = utc(s.now)
    ports = ", ".join(str(p) for p in s.ports)
    out = [
        "#!/usr/sbin/nft -f\n",
        f"# Floodgate blocklist: {len(items)} networks. Generated; do not edit.\n",
        f"table inet {s.table} {{}}\n",
        f"delete table inet {s.table}\n",
        f"table inet {s.table} {{\n",
    ]
    for name, version, kind in ((s.set4, 4, "ipv4_addr"), (s.set6, 6, "ipv6_addr")):
        out.append(f"\tset {name} {{\n\t\ttype {kind}\n\t\tflags interval, timeout\n")
        elements = [f"{i.text} timeout "
                    f"{remaining(i.expires, now, s.max_timeout)}s"
                    for i in items if i.version == version]
        if elements:
            out.append("\t\telements = {\n\t\t\t")
            out.append(",\n\t\t\t".join(elements))
            out.append("\n\t\t}\n")
        out.append("\t}\n")
    out += [
        "\tchain input {\n",
        f"\t\ttype filter hook input priority {s.priority}; policy accept;\n",
        f"\t\ttcp dport {{ {ports} }} ip saddr @{s.set4} drop\n",
        f"\t\ttcp dport {{ {ports} }} ip6 saddr @{s.set6} drop\n",
        "\t}\n}\n",
    ]
    return "".join(out).encode()


def render_ipset(items: list[Item], s: Settings) -> dict[str, bytes]:
    """`ipset restore` input filling swap sets, then swapping: the live sets never go empty.

    All adds come before any swap, so a failure part way leaves both live sets as they were.
    """
    now = utc(s.now)
    cap = min(s.max_timeout, IPSET_MAX_TIMEOUT)
    sets = ((s.ipset4, 4, "inet"), (s.ipset6, 6, "inet6"))
    out = [f"# Floodgate blocklist: {len(items)} networks. Load with `ipset restore`.\n"]
    for name, _, family in sets:
        for target in (name, f"{name}-new"):
            out.append(f"create {target} hash:net family {family} timeout 0 "
                       f"maxelem {s.ipset_maxelem} -exist\n")
        out.append(f"flush {name}-new\n")
    for name, version, _ in sets:
        out.extend(f"add {name}-new {i.text} "
                   f"timeout {remaining(i.expires, now, cap)}\n"
                   for i in items if i.version == version)
    for name, _, _ in sets:
        out.append(f"swap {name}-new {name}\ndestroy {name}-new\n")
    rules = {
        "v4": _restore(s, [_match(s, s.ipset4)], s.jump4),
        "v6": _restore(s, [_match(s, s.ipset6)], s.jump6),
    }
    return {"": "".join(out).encode(), **rules}


def render_iptables(items: list[Item], s: Settings) -> dict[str, bytes]:
    """`iptables-restore --noflush` input: a dedicated chain, refilled; one DROP per network.

    No kernel timeouts here: expired entries leave when `watch` reloads the chain.
    """
    ports = ",".join(str(p) for p in s.ports)
    head = [f"-A {s.chain} ! -p tcp -j RETURN",
            f"-A {s.chain} -p tcp -m multiport ! --dports {ports} -j RETURN"]
    parts: dict[str, bytes] = {}
    for name, version, jump in (("", 4, s.jump4), ("v6", 6, s.jump6)):
        rules = head + [f"-A {s.chain} -s {cidr(i)} -j DROP"
                        for i in items if i.version == version]
        parts[name] = _restore(s, rules, jump)
    return parts


def _match(s: Settings, ipset: str) -> str:
    ports = ",".join(str(p) for p in s.ports)
    return (f"-A {s.chain} -p tcp -m multiport --dports {ports} "
            f"-m set --match-set {ipset} src -j DROP")


def _restore(s: Settings, rules: list[str], jump: bool) -> bytes:
    """A filter-table transaction; declaring the chain under --noflush empties it first."""
    lines = ["*filter", f":{s.chain} - [0:0]", *rules]
    if jump:
        lines.append(f"-I {s.hook} 1 -j {s.chain}")
    else:
        lines.insert(0, f"# once, if missing: -I {s.hook} 1 -j {s.chain}")
    lines.append("COMMIT")
    return ("\n".join(lines) + "\n").encode()


def render(fmt: str, entries: Iterable[Entry], protected: Iterable[str],
           settings: Settings) -> Rendered:
    """The one entry point: prepare, flatten for the kernel formats, render."""
    prepared = prepare(entries, protected, settings.now)
    items = prepared.items
    if fmt in KERNEL_FORMATS:
        items = flatten(items)
    parts: dict[str, bytes]
    if fmt == "nft":
        parts = {"": render_nft(items, settings)}
    elif fmt == "ipset":
        parts = render_ipset(items, settings)
    elif fmt == "iptables":
        parts = render_iptables(items, settings)
    elif fmt == "plain":
        parts = {"": render_plain(items)}
    elif fmt == "json":
        parts = {"": render_json(items)}
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return Rendered(fmt, parts, len(items), prepared.skipped)
