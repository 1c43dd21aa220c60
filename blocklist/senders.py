"""The sender lists, as operators change them: allow or refuse mail by envelope sender,
sender domain (and its subdomains), From-header domain, or the client's HELO name.

Postfix's check_sender_access / check_helo_access and rspamd's multimap, kept in the store
so every relay applies the same lists. One owner for the CLI and the web API alike: each
change is audited like a host operation (blocklist/operations.py), and bumps a counter the
relays poll, so a change takes effect everywhere within `store.refresh_interval`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from blocklist.blocks import utc
from blocklist.operations import NotFound, audit
from filters.address import normalise_domain, valid_domain
from relay.store.database import bump_generation, read_generation
from relay.store.sender_tables import SenderRule

GENERATION_KEY = "sender_lists_generation"
LISTS = ("allow", "block")
FIELDS = ("sender", "helo")
NULL_SENDER = "<>"
MAX_ADDRESS = 320  # RFC 5321 4.5.3.1: 64 + @ + 255


class BadPattern(ValueError):
    """Not an address, a domain or `<>`; the message says why."""


def pattern(text: str, field: str = "sender") -> str:
    """The canonical form of a list entry: `user@domain` (local part lower-cased, domain
    IDNA-normalised), `domain`, or `<>` (the null sender); a HELO entry is a name."""
    text = text.strip()
    if field == "sender" and text == NULL_SENDER:
        return text
    if len(text) > MAX_ADDRESS:
        raise BadPattern(f"longer than {MAX_ADDRESS} characters ({len(text)})")
    local, at, domain = text.rpartition("@")
    if at and field == "helo":
        raise BadPattern(f"{text!r}: a HELO entry is a host or domain name")
    if at and (not local or len(local) > 64 or any(c.isspace() or ord(c) < 32 for c in local)):
        raise BadPattern(f"{text!r}: not an address (local part empty, too long, or with "
                         "spaces or control characters)")
    name = normalise_domain(domain)
    if not valid_domain(name):
        raise BadPattern(f"{text!r}: {domain!r} is not a domain name")
    return f"{local.lower()}@{name}" if at else name


def keys(address: str) -> list[str]:
    """What an envelope sender (or a From address) is looked up by, most specific first:
    the address, its domain, each parent domain (`a.b.spam.test`: `b.spam.test`,
    `spam.test`, `test`); the null sender by `<>`."""
    address = address.strip().strip("<>").strip()
    if not address:
        return [NULL_SENDER]
    local, at, domain = address.rpartition("@")
    name = normalise_domain(domain)
    labels = name.split(".")
    parents = [".".join(labels[i:]) for i in range(len(labels)) if labels[i]]
    return ([f"{local.lower()}@{name}"] if at and local else []) + parents


def name_keys(name: str) -> list[str]:
    """A HELO name and its parent domains."""
    labels = normalise_domain(name).split(".")
    return [".".join(labels[i:]) for i in range(len(labels)) if labels[i]]


@dataclass(frozen=True, slots=True)
class Rule:
    list: str
    field: str
    pattern: str
    reason: str
    created_at: datetime


def rules(engine: Engine) -> list[Rule]:
    with engine.connect() as conn:
        rows = conn.execute(select(SenderRule.list, SenderRule.field, SenderRule.pattern,
                                   SenderRule.reason, SenderRule.created_at)
                            .order_by(SenderRule.list, SenderRule.field, SenderRule.pattern))
        return [Rule(a, f, p, r, utc(c)) for a, f, p, r, c in rows]


def generation(engine: Engine) -> int:
    return read_generation(engine, GENERATION_KEY)


# -- changes, each audited ---------------------------------------------------------------


def add(engine: Engine, list_: str, entry: str, reason: str, *, actor: str,
        field: str = "sender") -> bool:
    """Put `entry` (from pattern()) on the `allow` or `block` list; False when it was
    there already (audited either way: the operator asked)."""
    ins = (pg_insert if engine.dialect.name == "postgresql" else sqlite_insert)(SenderRule)
    with engine.begin() as conn:
        done = conn.execute(ins.values(list=list_, field=field, pattern=entry, reason=reason,
                                       created_at=datetime.now(UTC))
                            .on_conflict_do_nothing()).rowcount
        bump_generation(conn, GENERATION_KEY)
    audit(engine, actor, f"sender_{list_}", entry, f"{field} {entry}: {reason}".strip(": "))
    return bool(done)


def remove(engine: Engine, list_: str, entry: str, *, actor: str, field: str = "sender") -> None:
    with engine.begin() as conn:
        gone = conn.execute(delete(SenderRule).where(
            SenderRule.list == list_, SenderRule.field == field,
            SenderRule.pattern == entry)).rowcount
        if gone:
            bump_generation(conn, GENERATION_KEY)
    if not gone:
        raise NotFound(f"{entry} ({field}) is not on the sender {list_} list")
    audit(engine, actor, f"sender_un{list_}", entry, f"{field} {entry}")
