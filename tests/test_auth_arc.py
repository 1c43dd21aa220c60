"""ARC chain verification (relay/auth/arc.py): chains sealed in the test by dkimpy with
real keys published in a real nsd, verified whole, broken, and hostile."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import dkim
import pytest

from relay.auth.arc import MAX_ARC_SETS, verify_arc
from relay.auth.lookup import TxtLookup
from relay.auth.verdicts import ArcResult
from tests.dkim_support import (
    MESSAGE,
    Key,
    RecordingExecutor,
    rsa_key,
    silent_lookup,
    txt_lookup,
)
from tests.dns_server import run_nsd, silent_nameserver

LIST, FORWARDER = "lists.test", "forwarder.test"


@dataclass
class Zone:
    key: Key
    txt: TxtLookup


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zone]:
    tmp = tmp_path_factory.mktemp("arc")
    key = rsa_key(tmp)
    zones = {LIST: [key.record("arc")], FORWARDER: [key.record("seal")]}
    with run_nsd(tmp, zones) as server:
        yield Zone(key, txt_lookup(server.resolver()))


def seal(message: bytes, key: Key, domain: str, selector: str, results: str) -> bytes:
    """One hop: its Authentication-Results, then the ARC set dkimpy seals over it."""
    ar = f"Authentication-Results: {domain}; {results}\r\n".encode()
    arc_set = dkim.arc_sign(ar + message, selector.encode(), domain.encode(), key.private,
                            domain.encode())
    assert arc_set, "dkimpy sealed nothing"
    return b"".join(arc_set) + ar + message


def one_hop(zone: Zone) -> bytes:
    return seal(MESSAGE, zone.key, LIST, "arc", "spf=pass smtp.mailfrom=example.test")


def two_hops(zone: Zone) -> bytes:
    return seal(one_hop(zone), zone.key, FORWARDER, "seal", "arc=pass; spf=fail")


def verify(message: bytes, txt: TxtLookup) -> ArcResult:
    return asyncio.run(verify_arc(message, txt))


def test_no_arc_headers_is_none(zone: Zone) -> None:
    assert verify(MESSAGE, zone.txt) == ArcResult("none")


def test_a_chain_of_one_hop_passes(zone: Zone) -> None:
    found = verify(one_hop(zone), zone.txt)
    assert found == ArcResult("pass", 1, (LIST,),
                              (f"{LIST}; spf=pass smtp.mailfrom=example.test",))


def test_a_chain_of_two_hops_passes_newest_first(zone: Zone) -> None:
    found = verify(two_hops(zone), zone.txt)
    assert (found.result, found.instances, found.sealers) == ("pass", 2, (FORWARDER, LIST))
    assert found.results == (f"{FORWARDER}; arc=pass; spf=fail",
                             f"{LIST}; spf=pass smtp.mailfrom=example.test")


def test_a_body_changed_after_the_newest_seal_fails(zone: Zone) -> None:
    found = verify(two_hops(zone).replace(b"attached", b"in the link"), zone.txt)
    assert found.result == "fail" and not found.temporary
    assert found.reason == "Most recent ARC-Message-Signature did not validate"
    # what the sets claim is still reported, for logs; it vouches for nothing
    assert found.sealers == (FORWARDER, LIST)


def test_an_older_set_altered_breaks_the_seal(zone: Zone) -> None:
    forged = two_hops(zone).replace(b"spf=pass smtp.mailfrom", b"dkim=pass smtp.mailfrom")
    found = verify(forged, zone.txt)
    assert (found.result, found.reason) == ("fail", "ARC-Seal[2] did not validate")


def test_a_set_missing_from_the_chain_fails(zone: Zone) -> None:
    chain = two_hops(zone)
    without_first_seal = re.sub(rb"ARC-Seal: i=1;.*?\r\n(?=\S)", b"", chain, flags=re.S)
    assert without_first_seal != chain
    found = verify(without_first_seal, zone.txt)
    assert (found.result, found.reason) == ("fail", "Incomplete ARC set for instance 1")


def test_a_chain_its_newest_sealer_declared_failed_fails(zone: Zone) -> None:
    declared = seal(one_hop(zone), zone.key, FORWARDER, "seal", "arc=fail")
    found = verify(declared, zone.txt)
    assert (found.result, found.instances) == ("fail", 2)
    assert found.reason == "the newest ARC-Seal says cv=fail"


def test_a_seal_key_dns_cannot_give_now_fails_as_temporary(zone: Zone) -> None:
    chain = one_hop(zone)
    with silent_nameserver() as address:
        found = verify(chain, silent_lookup(address))
    assert (found.result, found.temporary) == ("fail", True)
    assert found.reason.startswith("key lookup for arc._domainkey.lists.test failed")


def test_hostile_chains_are_bounded_and_answered(zone: Zone) -> None:
    chain = one_hop(zone)
    too_long = b"".join(
        f"ARC-Seal: i={i}; cv=pass; a=rsa-sha256; d=x.test; s=s; b=AAAA\r\n".encode()
        for i in range(MAX_ARC_SETS + 1, 0, -1)) + MESSAGE
    cases = {
        too_long: f"not verified: more than {MAX_ARC_SETS} ARC sets",
        b"ARC-Seal: cv=none; a=rsa-sha256; d=x.test; s=s; b=AAAA\r\n" + MESSAGE:
            "an ARC header field has no i=",
        chain.replace(b"ARC-Seal: i=1", b"ARC-Seal: i=1; i=2", 1):
            "ARC-Seal i=1 is not a tag=value list",
        chain.replace(b"ARC-Message-Signature: i=1", b"ARC-Message-Signature: i=1 ", 1):
            "not verified",
        b" folded onto nothing\r\n" + chain: "header section not parsable",
        chain.replace(b"a=rsa-sha256", b"a=rsa-sha1"): "unknown signature algorithm",
    }
    for message, reason in cases.items():
        found = verify(message, zone.txt)
        assert found.result == "fail", (reason, found)
        assert found.reason.startswith(reason), (reason, found)


def test_the_chain_is_verified_off_the_loop_or_in_a_process(zone: Zone) -> None:
    chain = two_hops(zone)

    async def go() -> tuple[ArcResult, ArcResult]:
        with RecordingExecutor() as threads:
            in_thread = await verify_arc(chain, zone.txt, executor=threads)
        assert [name for name, _ in threads.ran] == ["_read", "_verify"]
        assert all(ident != threading.get_ident() for _, ident in threads.ran)
        with ProcessPoolExecutor(max_workers=1) as processes:
            in_process = await verify_arc(chain, zone.txt, executor=processes)
        return in_thread, in_process

    in_thread, in_process = asyncio.run(go())
    assert in_thread == in_process
    assert (in_thread.result, in_thread.sealers) == ("pass", (FORWARDER, LIST))
