"""Connect-time DNSBL check: weighted zones queried concurrently, postscreen style.

Each zone has a weight and the return codes that count; the weights of the zones that list
the client are summed and a sum at or above `reject_score` refuses the connection with
`554 5.7.1`. DNS trouble never refuses or tempfails mail: a zone that times out, fails or
answers with an error code (Spamhaus's 127.255.255.x, a resolver rewriting NXDOMAIN to a
public address) simply does not list, and is logged. Answers are cached per zone and
address for their TTL (negative ones for the SOA minimum, capped) because an outbreak is
the same few thousand hosts connecting again and again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from filters.address import normalise_domain
from filters.base import Action, Context, Stage, Verdict, verdict_note
from filters.failure import FailurePolicy
from filters.verdict_cache import VerdictCache

log = logging.getLogger("floodgate.dnsbl")

# Code ranges as inclusive (low, high) integer IPv4 addresses.
CodeRanges = tuple[tuple[int, int], ...]

LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")
# Answers that mean "query refused / misconfigured", never "listed".
ERROR_NETS = (ipaddress.IPv4Network("127.255.255.0/24"), ipaddress.IPv4Network("127.0.0.1/32"))

MAX_PATTERN_RANGES = 4096
_OCTET = r"(\d{1,3}|\[[0-9.;]+\])"
_PATTERN = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_SITE = re.compile(r"(?P<name>[^=*\s]+)(?:=(?P<codes>[^*\s]+))?(?:\*(?P<weight>-?\d+))?")


def _octet(text: str) -> list[tuple[int, int]]:
    """`7`, `[2..11]`, `[2;4;10..12]` -> inclusive ranges of one octet."""
    items = text[1:-1].split(";") if text.startswith("[") else [text]
    out = []
    for item in items:
        lo, _, hi = item.partition("..")
        a, b = int(lo), int(hi or lo)
        if not 0 <= a <= b <= 255:
            raise ValueError(f"bad octet {item!r}")
        out.append((a, b))
    return out


def parse_codes(text: str) -> CodeRanges:
    """One `codes` entry: `127.0.0.2`, `127.0.0.2-127.0.0.11`, `127.0.0.0/24` or postscreen's
    `127.0.0.[2..11]` / `127.0.0.[2;4;10..11]`."""
    text = text.strip()
    try:
        if "-" in text:
            lo, _, hi = text.partition("-")
            a, b = int(ipaddress.IPv4Address(lo.strip())), int(ipaddress.IPv4Address(hi.strip()))
            if a > b:
                raise ValueError("range runs backwards")
            return ((a, b),)
        if "/" in text:
            net = ipaddress.IPv4Network(text)
            return ((int(net.network_address), int(net.broadcast_address)),)
        m = _PATTERN.fullmatch(text)
        if m is None:
            raise ValueError("not an IPv4 address, range or pattern")
        ranges = [(0, 0)]
        for part in m.groups():  # most significant octet first; spans split when needed
            octet = _octet(part)
            wide = [(lo, hi) == (0, 255) for lo, hi in octet]
            size = sum(1 if w or a == b else b - a + 1 for a, b in ranges for w in wide)
            if size > MAX_PATTERN_RANGES:
                raise ValueError("pattern too wide")
            nxt: list[tuple[int, int]] = []
            for a, b in ranges:
                for (lo, hi), w in zip(octet, wide, strict=True):
                    if w:
                        nxt.append((a << 8, (b << 8) | 255))
                    else:
                        nxt.extend(((v << 8) | lo, (v << 8) | hi) for v in range(a, b + 1))
            ranges = nxt
        return tuple(ranges)
    except ValueError as e:
        raise ValueError(f"bad return code {text!r}: {e}") from None


def parse_site(spec: str) -> tuple[str, tuple[str, ...], int]:
    """postscreen's `zen.example=127.0.0.[2..11]*3` -> (zone, codes, weight); `=...` and
    `*weight` are optional (any listing code; weight 1)."""
    m = _SITE.fullmatch(spec.strip())
    if m is None:
        raise ValueError(f"expected \"zone[=codes][*weight]\", got {spec!r}")
    codes = tuple(c for c in (m["codes"] or "").split(",") if c)
    for c in codes:
        parse_codes(c)
    return normalize_zone(m["name"]), codes, int(m["weight"] or 1)


def normalize_zone(name: str) -> str:
    name = normalise_domain(name)
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException as e:
        raise ValueError(f"bad zone name {name!r}: {e}") from None
    if not name or "." not in name:
        raise ValueError(f"bad zone name {name!r}")
    return name


def parse_nameserver(text: str) -> tuple[str, int]:
    """`127.0.0.1:5300`, `[::1]:5300`, or a bare address (port 53)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", text) or re.fullmatch(
        r"([0-9.]+)(?::(\d+))?", text)
    host, port = (m.group(1), int(m.group(2) or 53)) if m else (text, 53)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver must be an IP address [and :port], got {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"nameserver port {port} is out of range 1-65535")
    return host, port


def reversed_name(address: str) -> str:
    """The DNSBL query label: reversed octets for IPv4 (and IPv4-mapped IPv6), reversed
    nibbles for IPv6. Raises ValueError for anything that is not an IP address."""
    ip = ipaddress.ip_address(address.strip().strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d
    if isinstance(ip, ipaddress.IPv4Address):
        return ".".join(reversed(str(ip).split(".")))
    return ".".join(reversed(ip.exploded.replace(":", "")))


def is_error_code(code: str) -> bool:
    """127.255.255.x (Spamhaus: public resolver, typo, rate limit), 127.0.0.1, or anything
    outside 127/8 (a resolver hijacking NXDOMAIN) says the query failed, not the host."""
    try:
        ip = ipaddress.IPv4Address(code)
    except ValueError:
        return True
    return ip not in LOOPBACK_NET or any(ip in net for net in ERROR_NETS)


@dataclass(frozen=True, slots=True)
class Zone:
    """One configured list: `codes` empty means any non-error answer counts."""

    name: str
    weight: int = 1
    codes: tuple[str, ...] = ()
    nameserver: str | None = None  # None: the filter's nameserver
    timeout: float | None = None  # None: the filter's timeout
    ranges: CodeRanges = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_zone(self.name))
        ranges: list[tuple[int, int]] = []
        for c in self.codes:
            ranges.extend(parse_codes(c))
        object.__setattr__(self, "ranges", tuple(ranges))

    def counts(self, code: str) -> bool:
        if is_error_code(code):
            return False
        if not self.ranges:
            return True
        n = int(ipaddress.IPv4Address(code))
        return any(lo <= n <= hi for lo, hi in self.ranges)


class Listing(NamedTuple):
    zone: str
    codes: tuple[str, ...]
    weight: int


@dataclass(frozen=True, slots=True)
class DnsblResult:
    """Everything the zones said about one address (for the verdict and `hosts show`)."""

    address: str
    score: int = 0
    listings: tuple[Listing, ...] = ()  # zones whose answer counted, with their weight
    ignored: tuple[tuple[str, tuple[str, ...]], ...] = ()  # answered, but not with a code
    errors: tuple[tuple[str, str], ...] = ()  # (zone, "timeout" / "error code 127.255...")

    @property
    def detail(self) -> str:
        listed = " ".join(f"{z}={','.join(c)}*{w}" for z, c, w in self.listings)
        return f"score={self.score} {listed}".strip()

    def note(self, reject_score: int) -> str:
        """One word for the event of an accepted connection: `clean`, or the score against
        the threshold, each zone that answered with its codes, each zone that failed."""
        if not (self.listings or self.ignored or self.errors):
            return "clean"
        zones = [f"{z}:{'+'.join(c)}*{w}" for z, c, w in self.listings]
        zones += [f"{z}:{'+'.join(c)}*0" for z, c in self.ignored]
        zones += [f"{z}:{why}" for z, why in self.errors]
        return ",".join([f"{self.score}/{reject_score}", *zones])


class ZoneAnswer(NamedTuple):
    """What the cache keeps per zone and address."""

    codes: tuple[str, ...]  # empty: not listed
    ttl: float


@dataclass(slots=True)
class DnsblStats:
    queries: int = 0  # DNS queries sent (cache misses that reached the wire)
    cache_hits: int = 0
    timeouts: int = 0
    failures: int = 0  # other DNS errors: SERVFAIL, refused, network
    # per zone (the configured zones: a bounded set), for the metrics: one slow list shows
    zone_timeouts: dict[str, int] = field(default_factory=dict)


class DnsblFilter:
    """CONNECT-stage filter; the relay may run it at HELO time as well."""

    name = "dnsbl"
    stage = Stage.CONNECT

    def __init__(
        self, zones: Sequence[Zone], *, reject_score: int = 1, nameserver: str | None = None,
        timeout: float = 2.0, on_error: Action = Action.ACCEPT,
        cache: VerdictCache[ZoneAnswer] | None = None, min_ttl: float = 0.0,
        max_ttl: float = 3600.0, negative_ttl: float = 300.0,
    ) -> None:
        names = [z.name for z in zones]
        if len(set(names)) != len(names):
            raise ValueError("a zone is configured twice")
        self.zones = tuple(zones)
        self.reject_score = reject_score
        self.nameserver = nameserver
        self.default_timeout = timeout
        # The pipeline's guard: every zone has its own timeout, all run concurrently.
        self.timeout = max([self._timeout(z) for z in self.zones] + [timeout]) + 1.0
        self.on_error = FailurePolicy(self.name, on_error, self.stage)
        self.cache = cache
        self.min_ttl, self.max_ttl, self.negative_ttl = min_ttl, max_ttl, negative_ttl
        self.stats = DnsblStats()
        self._resolvers: dict[str | None, dns.asyncresolver.Resolver] = {}
        self._inflight: dict[str, asyncio.Future[ZoneAnswer]] = {}
        for z in self.zones:
            if z.nameserver or nameserver:
                self._resolver(z.nameserver or nameserver)  # validate early

    def zone_timeouts(self) -> dict[str, int]:
        """DNS queries that timed out, per configured zone, since start (for the metrics)."""
        return {z.name: self.stats.zone_timeouts.get(z.name, 0) for z in self.zones}

    def _timeout(self, zone: Zone) -> float:
        return zone.timeout if zone.timeout is not None else self.default_timeout

    def _resolver(self, nameserver: str | None) -> dns.asyncresolver.Resolver:
        """One resolver per nameserver; the system's (resolv.conf) when none is configured.
        dnspython's own cache stays off: ours is bounded and clamps TTLs."""
        r = self._resolvers.get(nameserver)
        if r is None:
            if nameserver is None:
                r = dns.asyncresolver.Resolver()
            else:
                host, port = parse_nameserver(nameserver)
                r = dns.asyncresolver.Resolver(configure=False)
                r.nameservers = [host]
                r.port = port
            r.cache = None
            r.timeout = 60.0  # per attempt; the zone's `lifetime` is what bounds a query
            self._resolvers[nameserver] = r
        return r

    async def check(self, ctx: Context) -> Verdict | None:
        try:
            result = await self.lookup(ctx.client)
        except ValueError:
            return None  # not an IP address (unix socket, test harness): nothing to look up
        ctx.notes.append(verdict_note(self.name, result.note(self.reject_score), "looked_up"))
        if not result.listings or result.score < self.reject_score:
            return None
        top = max(result.listings, key=lambda item: item.weight)
        return Verdict.reject(
            554, "5.7.1", "dnsbl",
            f"Service unavailable; client [{result.address}] blocked using {top.zone}",
            detail=result.detail,
        )

    async def lookup(self, address: str) -> DnsblResult:
        """Ask every zone at once; a zone's trouble is reported in `errors`, never raised."""
        label = reversed_name(address)
        address = address.strip().strip("[]")
        answers = await asyncio.gather(*(self._query(z, label) for z in self.zones))
        listings: list[Listing] = []
        ignored: list[tuple[str, tuple[str, ...]]] = []
        errors: list[tuple[str, str]] = []
        for zone, answer in zip(self.zones, answers, strict=True):
            if isinstance(answer, str):
                errors.append((zone.name, answer))
                continue
            counted = tuple(c for c in answer if zone.counts(c))
            bad = tuple(c for c in answer if is_error_code(c))
            if bad:
                errors.append((zone.name, "error code " + ",".join(bad)))
            if counted:
                listings.append(Listing(zone.name, counted, zone.weight))
            elif answer and not bad:
                ignored.append((zone.name, answer))
        score = sum(item.weight for item in listings)
        return DnsblResult(address, score, tuple(listings), tuple(ignored), tuple(errors))

    async def _query(self, zone: Zone, label: str) -> tuple[str, ...] | str:
        """The zone's answer codes (empty: not listed), or a string saying what went wrong."""
        key = f"{label}.{zone.name}"
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.stats.cache_hits += 1
            return hit.codes
        future = self._inflight.get(key)
        if future is None:  # one query per name however many connections wait for it
            future = asyncio.ensure_future(self._resolve(zone, key))
            self._inflight[key] = future
            future.add_done_callback(lambda f: self._done(key, f))
        try:
            answer = await asyncio.shield(future)
        except dns.exception.Timeout:
            return "timeout"
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return answer.codes

    def _done(self, key: str, future: asyncio.Future[ZoneAnswer]) -> None:
        self._inflight.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved: no "never retrieved" noise if all waiters left

    async def _resolve(self, zone: Zone, key: str) -> ZoneAnswer:
        resolver = self._resolver(zone.nameserver or self.nameserver)
        qname = dns.name.from_text(key)
        self.stats.queries += 1
        try:
            rrset = (await resolver.resolve(qname, "A", search=False,
                                            lifetime=self._timeout(zone))).rrset
            if rrset is None:
                raise dns.resolver.NoAnswer
            answer = ZoneAnswer(tuple(sorted({r.address for r in rrset})),
                                min(max(rrset.ttl, self.min_ttl), self.max_ttl))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as e:
            answer = ZoneAnswer((), max(min(_negative_ttl(e), self.negative_ttl), self.min_ttl))
        except dns.exception.Timeout:
            self.stats.timeouts += 1
            self.stats.zone_timeouts[zone.name] = self.stats.zone_timeouts.get(zone.name, 0) + 1
            log.warning("dnsbl timeout zone=%s name=%s after %.1fs", zone.name, key,
                        self._timeout(zone))
            raise
        except Exception as e:
            self.stats.failures += 1
            log.warning("dnsbl lookup failed zone=%s name=%s: %s", zone.name, key, e)
            raise
        if bad := [c for c in answer.codes if is_error_code(c)]:
            # Logged per query, not per connection: cached, it would flood the log.
            log.warning("dnsbl error answer zone=%s name=%s codes=%s", zone.name, key,
                        ",".join(bad))
        if self.cache is not None:
            self.cache.put(key, answer, answer.ttl)
        return answer


def _negative_ttl(e: dns.exception.DNSException) -> float:
    """RFC 2308: min(SOA TTL, SOA minimum) from the authority section; inf without one (the
    configured cap applies)."""
    responses: Iterable[object] = ()
    if isinstance(e, dns.resolver.NXDOMAIN):
        responses = e.responses().values()
    elif isinstance(e, dns.resolver.NoAnswer):
        responses = [e.kwargs.get("response")]
    for response in responses:
        for rrset in getattr(response, "authority", ()):
            if rrset.rdtype == dns.rdatatype.SOA:
                return float(min(rrset.ttl, rrset[0].minimum))
    return float("inf")
