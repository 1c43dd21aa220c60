"""DKIM and ARC public keys (RFC 6376 3.6): fetched before verification, all at once.

dkimpy asks DNS through a synchronous `dnsfunc` in the middle of verifying; its own async
support needs aiodns. So the selectors are read first, every key record is fetched
concurrently through the shared async `TxtLookup`, and dkimpy then verifies in a worker
thread with a `dnsfunc` that answers from those records and never touches the network.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import dkim
from dkim import DomainSigner
from dkim.util import InvalidTagValueList, parse_tag_value

from relay.auth.lookup import DnsTemporary, TxtLookup
from relay.auth.quiet import QUIET

# a selector or domain label as DNS carries it (RFC 6376 3.1 and 3.5: A-labels only)
# A small message's verification runs on the loop: measured, a thread hand-off and back cost
# more CPU than a 3 kB message's rsa-2048 verification (0.7 ms), and the worst case allowed
# inline (two rsa-4096 signatures over 64 kB, relaxed) stays near 10 ms, under the loop's
# 20 ms stall budget. Bigger or more is done in the executor.
INLINE_MAX_BYTES = 64 * 1024
INLINE_MAX_SIGNATURES = 2

_LABEL = re.compile(rb"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def key_name(selector: bytes, domain: bytes) -> str | None:
    """`selector._domainkey.domain`, or None when s= or d= is no DNS name we will ask."""
    name = selector.strip().rstrip(b".") + b"._domainkey." + domain.strip().rstrip(b".")
    labels = name.split(b".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return name.decode("ascii").lower()


@dataclass(frozen=True)
class KeyRecord:
    """What DNS said for one key name: the record, or why there is none."""

    record: bytes | None = None
    temporary: str = ""     # the lookup failed for now: temperror
    missing: str = ""       # no usable record: permerror


async def fetch_keys(names: Iterable[str], txt: TxtLookup) -> dict[str, KeyRecord]:
    """Every distinct key name looked up concurrently; no exception escapes."""
    unique = sorted(set(names))
    answers = await asyncio.gather(*(_fetch(name, txt) for name in unique))
    return dict(zip(unique, answers, strict=True))


async def _fetch(name: str, txt: TxtLookup) -> KeyRecord:
    try:
        records = await txt(name)
    except DnsTemporary as e:
        return KeyRecord(temporary=f"key lookup for {name} failed for now: {e}".rstrip(": "))
    except Exception as e:  # a lookup that breaks must not break the message
        return KeyRecord(temporary=f"key lookup for {name} failed: {type(e).__name__}")
    if not records:
        return KeyRecord(missing=f"no key record at {name}")
    # RFC 6376 3.6.2.2: several TXT records make the result undefined; take the first
    # that is a key record at all, so a stray SPF-like record does not hide the key.
    keys = [r for r in records if b"p=" in r]
    if not keys:
        return KeyRecord(missing=f"no key record at {name}")
    return KeyRecord(record=keys[0])


@functools.lru_cache(maxsize=1024)
def key_problem(record: bytes, algorithm: bytes) -> str:
    """Why this key record cannot verify an `algorithm` signature ('' when it can):
    each reason is a permerror (RFC 6376 6.1.2)."""
    try:
        tags = parse_tag_value(record)
    except InvalidTagValueList:
        return "key record is not a tag list"
    if tags.get(b"p", b"").strip() == b"":
        return "key revoked (empty p=)"
    try:
        pk, _, ktag, _ = dkim.evaluate_pk("key", record)
    except Exception as e:  # KeyFormatError, bad base64, ASN.1 trouble
        return f"bad key record: {type(e).__name__}"
    if pk is None:
        return "key is not for email (s=)"
    wanted = algorithm.split(b"-", 1)[0]
    if ktag != wanted:
        return f"key type {ktag.decode()} does not fit a={algorithm.decode()}"
    return ""


def answering_from(keys: dict[str, KeyRecord]) -> Callable[..., bytes | None]:
    """A dkimpy `dnsfunc` that answers from the fetched records only."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        key = keys.get(name.decode("ascii", "replace").rstrip(".").lower())
        if key is None:
            return None
        if key.temporary:
            raise dkim.DnsTimeoutError(key.temporary)
        return key.record

    return dnsfunc


Signer = TypeVar("Signer", bound=DomainSigner)


def parsed(kind: type[Signer], message: bytes) -> Signer:
    """dkimpy's DKIM or ARC object for `message`, without its line-by-line parse of the body
    when the message has CRLF line ends only (as SMTP delivers it): that parse splits and
    rejoins every body line in calls that hold the GIL (~0.6 s for 20 MB); the body it
    would produce is then the bytes after the first empty line as they are."""
    end = message.find(b"\r\n\r\n")
    if end < 0 or not _crlf_only(message):
        return kind(message, logger=QUIET)
    signer = kind(message[: end + 2], logger=QUIET)
    signer.body = message[end + 4:]
    return signer


def _crlf_only(message: bytes, chunk: int = 1 << 20) -> bool:
    """No bare LF, checked a megabyte at a time so the GIL is let go between the scans."""
    start = 0
    while start < len(message):
        stop = message.find(b"\n", min(start + chunk, len(message)) - 1) + 1 or len(message)
        piece = message[start:stop]
        if piece.count(b"\n") != piece.count(b"\r\n"):
            return False
        start = stop
    return True
