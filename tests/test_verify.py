"""Recipient verification ([domains."x".verify]) through a running relay: a real next hop that
knows its users (tests/sink.py) answers the RCPT probes, a real slapd the LDAP lookups.

What must hold: the alias table answers first and alone; a probe is MAIL FROM:<>, RCPT TO,
QUIT, never DATA; found and not-found answers are cached; a probe that cannot complete (no
server, silence, a 4xx) is `450 4.1.1`, never `550`; and a dictionary attack of 200
addresses makes no more probes than the domain's token bucket holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import smtplib
import socket
import string
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.config import Config
from relay.config.domains import DomainConfig
from relay.config.verify import VerifyConfig
from relay.delivery.client import NextHopClient
from relay.delivery.probe import probe
from relay.delivery.routing import Router
from relay.smtp.verify import DomainVerifier
from tests.ldap_server import run_slapd
from tests.sink import Sink
from tests.support import floodgate, free_port, unref, wait_until
from tests.test_blocking import connect, refused_at_connect

UNVERIFIED = "450 4.1.1 Recipient address not verified, try again later"
UNKNOWN = "550 5.1.1 User unknown in virtual alias table"
ALIASES = "alice@verified.test\n"


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    s.users = {"jane@verified.test", "john@verified.test"}
    s.up()
    yield s
    s.down()


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that takes connections and never says a word (no banner): a hung next hop."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def verified_domain(name: str, hop: str, settings: str) -> str:
    return f"""
[domains."{name}"]
next_hop = "{hop}"
[domains."{name}".verify]
{settings}
"""


# 127.0.0.4 may be blocked (the relay protects loopback by default)
BLOCKABLE = '[blocklist]\nprotect_loopback = false\nallow = ["127.0.0.1"]\n'


def start(start_relay, sqlite_url, extra: str):  # type: ignore[no-untyped-def]
    return start_relay(sqlite_url, aliases=ALIASES, extra=extra + BLOCKABLE)


def rcpt(relay, *addresses: str, source: str = "127.0.0.1") -> list[str]:  # type: ignore[no-untyped-def]
    """The replies to RCPT for each address, in one transaction, without the [ref ...]."""
    with connect(relay, source) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@sender.test")
        out = []
        for a in addresses:
            code, text = smtp.rcpt(a)
            text = text.decode()
            out.append(f"{code} {unref(text) if code >= 400 else text}")
        return out


def test_probe_positive_negative_and_cached(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    relay = start(start_relay, sqlite_url, verified_domain(
        "verified.test", sink.hop, 'smtp = true\nrate = 100\nburst = 100\ntimeout = "5s"'))
    first = rcpt(relay, "jane@verified.test", "nobody@verified.test", "alice@verified.test")
    assert first == ["250 2.1.5 Ok", UNKNOWN, "250 2.1.5 Ok"]
    # the alias table answered for alice: never probed; each of the others once
    assert sink.rcpts_seen() == [("FROM:<>", "jane@verified.test"),
                                 ("FROM:<>", "nobody@verified.test")]
    # cached, found and not found, whatever the case of the local part
    again = rcpt(relay, "Jane@verified.test", "NOBODY@verified.test", "jane@verified.test")
    assert again == ["250 2.1.5 Ok", UNKNOWN, "250 2.1.5 Ok"]
    assert len(sink.rcpts_seen()) == 2
    assert sink.messages() == []  # a probe never sends DATA
    relay.wait_for_log(r"reason=unknown_rcpt code=550 .*rcpt=nobody@verified.test .*"
                       r"detail=.*said 550 5.1.1")
    relay.wait_for_log(r"reason=known_rcpt .*rcpt=Jane@verified.test detail=.?cached")
    # a domain without [verify] still refuses what the table lacks, with no probe
    assert rcpt(relay, "jane@example.org") == [UNKNOWN]
    assert len(sink.rcpts_seen()) == 2


def test_a_probe_that_cannot_complete_is_450_never_550(start_relay, sqlite_url, sink,  # type: ignore[no-untyped-def]
                                                      silent) -> None:
    settings = 'smtp = true\nrate = 100\nburst = 100\ntimeout = "1s"'
    relay = start(start_relay, sqlite_url,
                  verified_domain("verified.test", sink.hop, settings)
                  + verified_domain("refused.test", f"127.0.0.1:{free_port()}", settings)
                  + verified_domain("silent.test", f"127.0.0.1:{silent}", settings))
    sink.set_reply("busy@verified.test", "451 4.3.0 mailbox busy, try later")
    sink.users.add("busy@verified.test")
    assert rcpt(relay, "busy@verified.test", "x@refused.test", "x@silent.test") == [
        UNVERIFIED] * 3
    relay.wait_for_log(r"reason=rcpt_unverified code=450 .*rcpt=busy@verified.test .*"
                       r"detail=.*said 451 4.3.0")
    relay.wait_for_log(r"reason=rcpt_unverified .*rcpt=x@silent.test detail=.?verification "
                       r"timed out after 1s")
    # postmaster is taken whatever its domain's server says (RFC 5321 4.5.1)
    assert rcpt(relay, "postmaster@silent.test") == ["250 2.1.5 Ok"]
    # not cached: the next try asks again, and takes the answer it gets then
    sink.set_reply("busy@verified.test", None)
    assert rcpt(relay, "busy@verified.test") == ["250 2.1.5 Ok"]
    assert sink.attempts("busy@verified.test") == 2


def test_a_dictionary_attack_is_limited_to_the_bucket(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    # a bucket of 5 that refills once in 1000 s: the attack makes 5 probes however long it runs
    relay = start(start_relay, sqlite_url, verified_domain(
        "verified.test", sink.hop, 'smtp = true\nrate = 0.001\nburst = 5\ntimeout = "5s"'))
    rnd = random.Random(22)
    names = [f"{''.join(rnd.choices(string.ascii_lowercase, k=8))}@verified.test"
             for _ in range(200)]
    replies: list[str] = []
    for i in range(0, 200, 10):  # ten a session: under the session error limit
        replies += rcpt(relay, *names[i:i + 10])
    assert len(sink.rcpts_seen()) == 5
    assert replies[:5] == [UNKNOWN] * 5
    assert replies[5:] == [UNVERIFIED] * 195  # never 550 unprobed, never accepted
    relay.wait_for_log(r"reason=verify_limited .*detail=.?verification rate limit reached")
    # the cache is free: the five refused again without a probe, jane waits for a token
    assert rcpt(relay, *names[:5], "jane@verified.test") == [UNKNOWN] * 5 + [UNVERIFIED]
    assert len(sink.rcpts_seen()) == 5


def test_guesses_past_the_bucket_get_the_attacker_blocked(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    """The 450s past the bucket (`verify_limited`) are scored like unknown recipients; the
    450s of a next hop that cannot answer (`rcpt_unverified`) are not: a real server
    retrying its message meanwhile is never blocked for it."""
    down = f"127.0.0.1:{free_port()}"  # nothing listens: every probe fails at once
    relay = start(start_relay, sqlite_url, verified_domain(
        "verified.test", sink.hop, 'smtp = true\nrate = 0.001\nburst = 1') + verified_domain(
        "down.test", down, 'smtp = true\nrate = 100\nburst = 100') +
        '[scoring]\nthreshold = 10\ninterval = "0.2s"\nwindow = "1h"\n')
    for _ in range(15):  # a queue retrying one message: fifteen 450s, no offence
        assert rcpt(relay, "jane@down.test", source="127.0.0.6") == [UNVERIFIED]
    codes: list[int] = []
    for first in range(0, 36, 9):  # nine a session: under the session error limits
        try:
            smtp = connect(relay, "127.0.0.5")
        except smtplib.SMTPConnectError as e:
            assert e.smtp_code == 554
            break
        with smtp:
            smtp.ehlo("attacker.test")
            if smtp.mail("x@attacker.test")[0] == 554:
                break
            codes += [smtp.rcpt(f"guess{i}@verified.test")[0] for i in range(first, first + 9)]
    assert codes[0] == 550 and set(codes[1:]) <= {450, 554}  # one probe, then the bucket
    assert len(sink.rcpts_seen()) == 1
    wait_until(lambda: refused_at_connect(relay, "127.0.0.5"), what="the attacker blocked")
    relay.wait_for_log(r"block network=127.0.0.5 score=\d+ .*verify_limited=\d+")
    assert refused_at_connect(relay, "127.0.0.6") is None


def test_a_blocked_host_never_reaches_the_probe(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    relay = start(start_relay, sqlite_url, verified_domain(
        "verified.test", sink.hop, 'smtp = true\nrate = 100\nburst = 100'))
    with connect(relay, "127.0.0.4") as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@sender.test")
        floodgate(relay.config, "block", "add", "127.0.0.4", "--for", "1h")
        wait_until(lambda: refused_at_connect(relay, "127.0.0.4"), what="block loaded")
        code, _ = smtp.rcpt("jane@verified.test")
        assert code == 554
    assert sink.rcpts_seen() == []


def test_concurrent_lookups_of_one_address_share_one_probe(sink) -> None:
    """Single flight, in-process against the real next hop: 20 lookups start together while
    the next hop holds its RCPT reply; one probe answers them all."""
    config = Config.model_validate({"domains": {"verified.test": {"next_hop": sink.hop}}})
    client = NextHopClient(config.delivery, "mx1.example.net", Router(config).hosts)

    async def run() -> list[bool | None]:
        verifier = DomainVerifier(VerifyConfig(smtp=True, rate=100, burst=100), sink.hop,
                                  lambda hop, a: probe(client, hop, a))
        sink.hold()
        lookups = [asyncio.ensure_future(verifier.verify("jane@verified.test"))
                   for _ in range(20)]
        await asyncio.to_thread(wait_until, lambda: sink.rcpts_seen(), 10, "the probe")
        sink.release()
        answers = await asyncio.gather(*lookups)
        return [a.known for a in answers]

    assert asyncio.run(run()) == [True] * 20
    assert sink.rcpts_seen() == [("FROM:<>", "jane@verified.test")]


@pytest.fixture
def slapd(tmp_path: Path):  # type: ignore[no-untyped-def]
    with run_slapd(tmp_path / "slapd", [("jane", "jane@ldap.test", ["j.doe@ldap.test"]),
                                        ("star", "st*r@ldap.test", [])]) as server:
        yield server


def test_ldap_lookup(start_relay, sqlite_url, slapd, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = (f'ldap_url = "{slapd.url}"\nldap_base = "{slapd.base}"\n'
                f'ldap_bind_dn = "{slapd.bind_dn}"\nldap_bind_password = "{slapd.password}"\n'
                'ldap_filter = "(|(mail=%s)(mailLocalAddress=%s))"\n'
                'rate = 100\nburst = 100\ntimeout = "3s"')
    relay = start(start_relay, sqlite_url, verified_domain(
        "ldap.test", f"127.0.0.1:{free_port()}", settings))
    assert rcpt(relay, "jane@ldap.test", "j.doe@ldap.test", "nobody@ldap.test") == [
        "250 2.1.5 Ok", "250 2.1.5 Ok", UNKNOWN]
    # escaped: `*` is a wildcard in a filter; unescaped, `*@ldap.test` would match everyone
    assert rcpt(relay, "*@ldap.test", "j*@ldap.test") == [UNKNOWN, UNKNOWN]
    assert rcpt(relay, "st*r@ldap.test") == ["250 2.1.5 Ok"]  # the literal one exists
    relay.wait_for_log(r"reason=known_rcpt .*rcpt=j.doe@ldap.test detail=.?found in LDAP")


def test_ldap_down_is_450(start_relay, sqlite_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(run_slapd(tmp_path / "slapd", [
            ("jane", "jane@ldap.test", [])]))
        settings = (f'ldap_url = "{server.url}"\nldap_base = "{server.base}"\n'
                    'rate = 100\nburst = 100\ntimeout = "2s"')
        relay = start(start_relay, sqlite_url, verified_domain(
            "ldap.test", f"127.0.0.1:{free_port()}", settings))
        assert rcpt(relay, "jane@ldap.test") == ["250 2.1.5 Ok"]  # anonymous bind
    # slapd stopped: an address not cached cannot be looked up, a cached one still can
    assert rcpt(relay, "nobody@ldap.test", "jane@ldap.test") == [UNVERIFIED, "250 2.1.5 Ok"]
    relay.wait_for_log(r"reason=rcpt_unverified .*rcpt=nobody@ldap.test detail=.?LDAP")


def test_verify_needs_a_source() -> None:
    with pytest.raises(ValueError, match="set smtp = true or ldap_url"):
        DomainConfig.model_validate({"next_hop": "127.0.0.1:25", "verify": {}})


def test_a_reload_keeps_the_cache_of_an_unchanged_domain(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    from tests.test_reload import edit, hup

    relay = start(start_relay, sqlite_url, verified_domain(
        "verified.test", sink.hop, 'smtp = true\nrate = 100\nburst = 100'))
    assert rcpt(relay, "jane@verified.test", "nobody@verified.test") == ["250 2.1.5 Ok",
                                                                         UNKNOWN]
    hup(relay)  # nothing changed: the answers stay cached
    assert rcpt(relay, "jane@verified.test", "nobody@verified.test") == ["250 2.1.5 Ok",
                                                                         UNKNOWN]
    assert len(sink.rcpts_seen()) == 2
    edit(relay.config, "burst = 100", "burst = 50")  # new settings: a new cache
    hup(relay)
    assert rcpt(relay, "nobody@verified.test") == [UNKNOWN]
    assert len(sink.rcpts_seen()) == 3
