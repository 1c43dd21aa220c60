"""The alias table: parsing import files, writing them to the store, and the in-memory
snapshot the relay answers RCPT from."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from filters.address import lookup_keys, normalise_domain, split_address, valid_domain
from relay.store.database import bump_generation
from relay.store.tables import Alias

GENERATION_KEY = "aliases_generation"
Format = Literal["postfix", "list", "csv"]
CHUNK = 10_000


@dataclass(frozen=True, slots=True)
class Entry:
    line: int
    address: str  # local@domain with the domain normalised, or @domain for a catch-all
    target: str = ""


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    text: str
    message: str


def normalise_address(raw: str) -> str | None:
    """`User@Example.ORG` to `User@example.org`; `@example.org` stays a catch-all key."""
    raw = raw.strip().strip("<>")
    if raw.startswith("@"):
        domain = normalise_domain(raw[1:])
        return f"@{domain}" if valid_domain(domain) else None
    parts = split_address(raw)
    if parts is None or parts[1].startswith("["):
        return None
    return f"{parts[0]}@{parts[1]}"


def _logical_lines(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """Postfix map syntax: `#` comments, blank lines, and lines starting with white space
    continue the previous one."""
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] in " \t" and pending is not None:
            pending = (pending[0], pending[1] + " " + stripped)
            continue
        if pending is not None:
            yield pending
        pending = (number, stripped)
    if pending is not None:
        yield pending


def parse(lines: Iterable[str], fmt: Format) -> Iterator[Entry | Problem]:
    """Entries and malformed lines (with their line numbers) of an import file."""
    if fmt == "csv":
        yield from _parse_csv(lines)
        return
    for number, text in _logical_lines(lines):
        fields = text.split(None, 1)
        key = fields[0]
        target = fields[1].strip() if len(fields) > 1 else ""
        if fmt == "list" and target:
            yield Problem(number, text, "expected one address per line")
            continue
        if fmt == "postfix" and not target:
            yield Problem(number, text, "expected \"address target\"")
            continue
        if "@" not in key:
            yield Problem(number, text, f"{key!r} has no domain")
            continue
        address = normalise_address(key)
        if address is None:
            yield Problem(number, text, f"{key!r} is not a valid address")
            continue
        yield Entry(number, address, target)


def _parse_csv(lines: Iterable[str]) -> Iterator[Entry | Problem]:
    reader = csv.reader(lines)
    for row in reader:
        number = reader.line_num
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        key = row[0].strip()
        if number == 1 and key.lower() in ("address", "email", "recipient"):
            continue  # header
        if len(row) > 2:
            yield Problem(number, ",".join(row), "expected address[,target]")
            continue
        address = normalise_address(key) if "@" in key else None
        if address is None:
            yield Problem(number, ",".join(row), f"{key!r} is not a valid address")
            continue
        yield Entry(number, address, row[1].strip() if len(row) > 1 else "")


@dataclass(slots=True)
class ImportResult:
    added: int = 0
    skipped: int = 0
    removed: int = 0
    rejected: list[Problem] = field(default_factory=list)


def _insert(engine: Engine):  # type: ignore[no-untyped-def]
    ins = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    return ins(Alias).on_conflict_do_nothing(index_elements=["address"])


def import_entries(
    engine: Engine,
    items: Iterable[Entry | Problem],
    hosted: Callable[[str], bool],
    *,
    replace: bool = False,
    trap: bool = False,
    progress: Callable[[int], None] = lambda n: None,
) -> ImportResult:
    """Write entries in one transaction: relays never see a half-done import.

    Entries for domains the configuration does not host are refused, since the relay would
    never consult them.
    """
    result = ImportResult()
    now = datetime.now(UTC)
    stmt = _insert(engine)
    valid = 0
    with engine.begin() as conn:
        if replace:
            result.removed = conn.execute(delete(Alias)).rowcount or 0
        before = conn.execute(select(func.count()).select_from(Alias)).scalar_one()
        batch: list[dict[str, object]] = []
        for item in items:
            if isinstance(item, Problem):
                result.rejected.append(item)
                continue
            domain = item.address.rpartition("@")[2]
            if not hosted(domain):
                result.rejected.append(
                    Problem(item.line, item.address, f"domain {domain!r} is not hosted")
                )
                continue
            batch.append(
                {"address": item.address, "domain": domain, "target": item.target,
                 "trap": trap, "created_at": now}
            )
            valid += 1
            if len(batch) >= CHUNK:
                conn.execute(stmt, batch)
                progress(len(batch))
                batch = []
        if batch:
            conn.execute(stmt, batch)
            progress(len(batch))
        after = conn.execute(select(func.count()).select_from(Alias)).scalar_one()
        result.added = after - before
        result.skipped = valid - result.added
        if result.added or result.removed:
            bump_generation(conn, GENERATION_KEY)
    return result


def add(engine: Engine, addresses: list[str], hosted: Callable[[str], bool],
        trap: bool = False) -> ImportResult:
    return import_entries(
        engine,
        (
            Entry(i, a) if a else Problem(i, raw, f"{raw!r} is not a valid address")
            for i, raw in enumerate(addresses, 1)
            for a in [normalise_address(raw) if "@" in raw else None]
        ),
        hosted,
        trap=trap,
    )


def remove(engine: Engine, addresses: list[str]) -> tuple[int, list[str]]:
    """Delete addresses; returns how many went and which were not there."""
    missing: list[str] = []
    removed = 0
    with engine.begin() as conn:
        for raw in addresses:
            address = normalise_address(raw) if "@" in raw else None
            gone = conn.execute(delete(Alias).where(Alias.address == address)).rowcount if \
                address else 0
            if gone:
                removed += gone
            else:
                missing.append(raw)
        if removed:
            bump_generation(conn, GENERATION_KEY)
    return removed, missing


def listing(engine: Engine, domain: str | None = None) -> Iterator[tuple[str, str]]:
    stmt = select(Alias.address, Alias.target).order_by(Alias.domain, Alias.address)
    if domain:
        stmt = stmt.where(Alias.domain == normalise_domain(domain))
    with engine.connect() as conn:
        yield from conn.execute(stmt)


def count(engine: Engine) -> dict[str, int]:
    stmt = select(Alias.domain, func.count()).group_by(Alias.domain).order_by(Alias.domain)
    with engine.connect() as conn:
        return {d: int(n) for d, n in conn.execute(stmt)}


@dataclass(frozen=True, slots=True)
class AliasBook:
    """An immutable snapshot of the alias table: RCPT is one set lookup, no I/O."""

    keys: frozenset[str]
    catch_all: frozenset[str]
    case_sensitive: bool
    delimiter: str
    generation: int = 0
    traps: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.keys)

    def known(self, local: str, domain: str) -> bool:
        if domain in self.catch_all:
            return True
        keys = lookup_keys(local, domain, case_sensitive=self.case_sensitive,
                           delimiter=self.delimiter)
        return any(k in self.keys for k in keys)

    def trap(self, local: str, domain: str) -> bool:
        """Spam-trap addresses match exactly (no plus-addressing: a trap is bait)."""
        if not self.traps:
            return False
        key = f"{local if self.case_sensitive else local.lower()}@{domain}"
        return key in self.traps


def load_book(engine: Engine, generation: int, *, case_sensitive: bool, delimiter: str,
              extra_traps: Iterable[str] = ()) -> AliasBook:
    """Read the whole table into a snapshot (about a second per million addresses).

    Trap addresses (flagged in the table, or `[scoring] traps`) are kept apart: they are
    never valid recipients.
    """
    keys: set[str] = set()
    catch_all: set[str] = set()
    traps: set[str] = set()
    for raw in extra_traps:
        address = normalise_address(raw)
        if address:
            traps.add(address if case_sensitive else address.lower())
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=50_000).execute(
            select(Alias.address, Alias.trap))
        for address, is_trap in result:
            key = address if case_sensitive else address.lower()
            if is_trap:
                traps.add(key)
            elif address.startswith("@"):
                catch_all.add(address[1:])
            else:
                keys.add(key)
    return AliasBook(frozenset(keys - traps), frozenset(catch_all), case_sensitive, delimiter,
                     generation, frozenset(traps))


def read_text(data: bytes) -> io.StringIO:
    """Decode an import file as UTF-8 (BOM tolerated), failing loudly on other encodings."""
    return io.StringIO(data.decode("utf-8-sig"), newline="")
