"""DKIM verification (relay/auth/dkim.py) against keys made in the test and published in a
real nsd: every result path, hostile signatures, and the cryptography kept off the loop."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from relay.auth.dkim import MAX_SIGNATURES, verify_dkim
from relay.auth.domainkeys import parsed
from relay.auth.lookup import TxtLookup
from relay.auth.verdicts import DkimResult
from tests.dkim_support import (
    MESSAGE,
    Key,
    RecordingExecutor,
    ed25519_key,
    rsa_key,
    silent_lookup,
    txt_line,
    txt_lookup,
)
from tests.dns_server import run_nsd, silent_nameserver

DOMAIN = "example.test"


@dataclass
class Zone:
    rsa: Key
    ed: Key
    small: Key
    txt: TxtLookup


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zone]:
    tmp = tmp_path_factory.mktemp("dkim")
    rsa, ed, small = rsa_key(tmp), ed25519_key(), rsa_key(tmp, 512)
    records = [rsa.record("rsa"), ed.record("ed"), small.record("small"),
               txt_line("revoked._domainkey", "v=DKIM1; k=rsa; p="),
               txt_line("edkey._domainkey", f"v=DKIM1; k=ed25519; p={rsa.public}"),
               txt_line("garbled._domainkey", "v=DKIM1; k=rsa; p=not*base64"),
               txt_line("spf._domainkey", "v=spf1 -all")]
    with run_nsd(tmp, {DOMAIN: records}) as server:
        yield Zone(rsa, ed, small, txt_lookup(server.resolver()))


def sign(key: Key, selector: str, message: bytes = MESSAGE, **kw: object) -> bytes:
    header = dkim.sign(message, selector.encode(), DOMAIN.encode(), key.private,
                       signature_algorithm=key.algorithm, **kw)  # type: ignore[arg-type]
    return header + message


def verify(message: bytes, txt: TxtLookup, **kw: object) -> list[DkimResult]:
    return asyncio.run(verify_dkim(message, txt, **kw))  # type: ignore[arg-type]


def results(found: list[DkimResult]) -> list[str]:
    return [r.result for r in found]


def test_unsigned_mail_has_no_results(zone: Zone) -> None:
    assert verify(MESSAGE, zone.txt) == []


def test_rsa_sha256_and_ed25519_sha256_pass(zone: Zone) -> None:
    [rsa] = verify(sign(zone.rsa, "rsa"), zone.txt)
    assert (rsa.result, rsa.domain, rsa.selector, rsa.algorithm) == (
        "pass", DOMAIN, "rsa", "rsa-sha256")
    assert not rsa.body_length_limited and len(rsa.header_b) >= 8
    [ed] = verify(sign(zone.ed, "ed"), zone.txt)
    assert (ed.result, ed.algorithm) == ("pass", "ed25519-sha256")


def test_altered_body_or_header_fails(zone: Zone) -> None:
    for key, selector in ((zone.rsa, "rsa"), (zone.ed, "ed")):
        signed = sign(key, selector)
        [body] = verify(signed.replace(b"figures are", b"figures were"), zone.txt)
        assert (body.result, body.reason) == ("fail", "body hash mismatch")
        [header] = verify(signed.replace(b"quarterly figures", b"urgent: wire"), zone.txt)
        assert (header.result, header.reason) == ("fail", "signature did not verify")


def test_key_missing_revoked_or_unusable_is_permerror(zone: Zone) -> None:
    cases = {"nokey": "no key record", "revoked": "key revoked",
             "edkey": "bad key record", "garbled": "bad key record",
             "spf": "no key record", "small": "public key too small"}
    for selector, reason in cases.items():
        key = zone.small if selector == "small" else zone.rsa
        [found] = verify(sign(key, selector), zone.txt)
        assert found.result == "permerror", (selector, found)
        assert found.reason.startswith(reason), (selector, found)


def test_wrong_key_type_rsa_sha1_and_an_unsigned_from_are_permerror(zone: Zone) -> None:
    signed = sign(zone.ed, "ed").replace(b"a=ed25519-sha256", b"a=rsa-sha256", 1)
    [mismatch] = verify(signed, zone.txt)
    assert (mismatch.result, mismatch.reason) == (
        "permerror", "key type ed25519 does not fit a=rsa-sha256")
    [sha1] = verify(sign(zone.rsa, "rsa").replace(b"a=rsa-sha256", b"a=rsa-sha1", 1),
                    zone.txt)
    assert (sha1.result, sha1.reason) == ("permerror", "rsa-sha1 is not accepted (RFC 8301)")
    [unsigned_from] = verify(sign(zone.rsa, "rsa", include_headers=[b"From"]).replace(
        b"h=from", b"h=subject", 1), zone.txt)
    assert (unsigned_from.result, unsigned_from.reason) == ("permerror", "From is not signed")


def test_a_key_dns_cannot_give_now_is_temperror(zone: Zone) -> None:
    signed = sign(zone.rsa, "rsa")
    with silent_nameserver() as address:
        [found] = verify(signed, silent_lookup(address))
    assert found.result == "temperror"
    assert found.reason.startswith("key lookup for rsa._domainkey.example.test failed")


def test_the_body_read_without_dkimpys_line_split_is_the_body_dkimpy_reads(zone: Zone) -> None:
    crlf = sign(zone.rsa, "rsa", MESSAGE + b"\r\n\r\ntrailing  blank lines \r\n\r\n")
    lf = crlf.replace(b"\r\n", b"\n")
    mixed = crlf.replace(b"Regards", b"\nRegards")
    for message in (crlf, lf, mixed, MESSAGE.split(b"\r\n\r\n")[0], b"Subject: x\r\n\r\n"):
        ours, theirs = parsed(dkim.DKIM, message), dkim.DKIM(message)
        assert (ours.headers, ours.body) == (theirs.headers, theirs.body), message
    assert results(verify(lf, zone.txt)) == ["pass"]
    assert results(verify(mixed, zone.txt)) == ["fail"]


def test_body_length_limit_passes_but_is_marked_and_lets_text_be_appended(zone: Zone) -> None:
    signed = sign(zone.rsa, "rsa", length=True)
    [found] = verify(signed, zone.txt)
    assert (found.result, found.body_length_limited) == ("pass", True)
    # RFC 6376 8.2: anyone may append to the body; the signature still verifies
    [appended] = verify(signed + b"Click here to confirm your password.\r\n", zone.txt)
    assert (appended.result, appended.body_length_limited) == ("pass", True)


def test_each_signature_gets_its_own_result_in_header_order(zone: Zone) -> None:
    signed = sign(zone.rsa, "rsa", sign(zone.ed, "revoked"))
    found = verify(signed, zone.txt)
    assert [(r.selector, r.result) for r in found] == [("rsa", "pass"), ("revoked", "permerror")]
    assert found[0].header_b != found[1].header_b


class CountingLookup:
    def __init__(self, inner: TxtLookup) -> None:
        self.inner, self.names = inner, []

    async def __call__(self, name: str) -> list[bytes]:
        self.names.append(name)
        return await self.inner(name)


def test_a_hundred_signatures_cost_ten_verifications(zone: Zone) -> None:
    one = dkim.sign(MESSAGE, b"rsa", DOMAIN.encode(), zone.rsa.private)
    many = [one.replace(b"s=rsa;", f"s=sel{i};".encode()) for i in range(99)]
    lookup = CountingLookup(zone.txt)
    found = verify(b"".join(many) + one + MESSAGE, lookup)
    assert len(found) == 100
    assert results(found[:MAX_SIGNATURES]) == ["permerror"] * MAX_SIGNATURES
    assert set(results(found[MAX_SIGNATURES:])) == {"neutral"}
    assert found[-1].reason == "not verified: only the first 10 signatures are"
    assert len(lookup.names) == MAX_SIGNATURES


def test_malformed_signatures_each_get_a_result(zone: Zone) -> None:
    good = dkim.sign(MESSAGE, b"rsa", DOMAIN.encode(), zone.rsa.private)
    hostile = [
        b"DKIM-Signature: this is not a tag list\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=rsa; b=%%%%; bh=x; h=from\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha512; d=example.test; s=rsa; b=AAAA; bh=AAAA; h=from\r\n",
        good.replace(b"s=rsa;", b"s=rsa; l=" + b"9" * 70 + b";"),
        good.replace(b"s=rsa;", b"s=rsa; l=" + b"9" * 90 + b";"),
        good.replace(b"d=example.test", b"d=example.test; d=again"),
        good.replace(b"s=rsa", b"s=" + b"x" * 300),
        good.replace(b"s=rsa", b"s=a..b"),
        good.replace(b"i=@example.test", b"i=example.test"),
        good.replace(b"b=", b"b=\r\n\t \r\n  \r\n \t"),
        re.sub(rb"bh=[^;]*;", b"bh=AAAAA===;", good),
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=rsa; h=from; bh=AAAA; b="
        + b"A" * 400_000 + b"\r\n",
    ]
    found = verify(b"".join(hostile) + MESSAGE, zone.txt, max_signatures=len(hostile))
    assert [(r.result, r.reason.split(":")[0]) for r in found] == [
        ("neutral", "signature is not a tag=value list"),
        ("neutral", "signature syntax"),
        ("permerror", "unknown signature algorithm"),
        ("fail", "l= is longer than the body"),
        ("neutral", "signature syntax"),
        ("neutral", "signature is not a tag=value list"),
        ("permerror", "s= or d= is not a DNS name"),
        ("permerror", "s= or d= is not a DNS name"),
        ("neutral", "signature syntax"),
        ("pass", ""),
        ("neutral", "signature syntax"),
        ("fail", "body hash mismatch"),
    ]
    assert len(found[-1].header_b) == 8


def test_a_header_section_dkimpy_refuses_still_names_its_signatures(zone: Zone) -> None:
    signed = sign(zone.rsa, "rsa")
    for broken in (b" folded onto nothing\r\n" + signed, signed.replace(b"To:", b"To ")):
        [found] = verify(broken, zone.txt)
        assert (found.result, found.domain, found.selector) == ("permerror", DOMAIN, "rsa")
        assert found.reason.startswith("header section not parsable")


def test_parsing_and_cryptography_run_off_the_event_loop(tmp_path: Path) -> None:
    """A 4096-bit RSA key: its verification runs on a worker thread, never the loop's (the
    stall it causes is measured by scripts/benchlib/auth_cost.py, not asserted here)."""
    big = rsa_key(tmp_path, 4096)
    with run_nsd(tmp_path, {"big.test": [big.record("big")]}) as server:
        signed = dkim.sign(MESSAGE, b"big", b"big.test", big.private) + MESSAGE

        async def go() -> list[DkimResult]:
            with RecordingExecutor() as executor:
                found = await verify_dkim(signed, txt_lookup(server.resolver()),
                                          executor=executor)
            assert [name for name, _ in executor.ran] == ["_read", "_verify"]
            assert all(ident != threading.get_ident() for _, ident in executor.ran)
            return found

        assert results(asyncio.run(go())) == ["pass"]


def test_the_work_can_go_to_a_process_pool(zone: Zone) -> None:
    """Every argument pickles: a large body's hashing can leave the loop's GIL too."""
    signed = sign(zone.ed, "ed", sign(zone.rsa, "rsa"))

    async def go() -> list[DkimResult]:
        with ProcessPoolExecutor(max_workers=1) as executor:
            return await verify_dkim(signed, zone.txt, executor=executor)

    assert results(asyncio.run(go())) == ["pass", "pass"]
