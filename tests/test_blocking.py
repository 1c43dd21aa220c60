"""Host scoring and the connect gate against running relays, with many client addresses
from 127.0.0.0/8 (the relay itself listens on 127.0.0.1, which is never blocked)."""

from __future__ import annotations

import signal
import smtplib
from datetime import timedelta

import pytest

from blocklist import blocks
from relay.store.database import make_engine
from tests.support import floodgate, unref, wait_until
from tests.test_smtp import ALIASES, MESSAGE

SCORING = """
[scoring]
threshold = 10
interval = "0.2s"
window = "1h"
traps = ["trap@example.org"]
[blocklist]
block_time = "%s"
escalation = 2
protect_loopback = false
allow = ["127.0.0.9"]
"""


def connect(relay, source: str) -> smtplib.SMTP:  # type: ignore[no-untyped-def]
    return smtplib.SMTP("127.0.0.1", relay.port, timeout=10, source_address=(source, 0))


def refused_at_connect(relay, source: str) -> str | None:  # type: ignore[no-untyped-def]
    """The 554 text when `source` is refused before the greeting, else None."""
    try:
        connect(relay, source).quit()
    except smtplib.SMTPConnectError as e:
        assert e.smtp_code == 554
        return e.smtp_error.decode()
    return None


def dictionary_attack(relay, source: str, tries: int = 20) -> list[int]:  # type: ignore[no-untyped-def]
    """RCPT reply codes of `tries` unknown recipients, 9 per session (under
    smtpd_soft_error_limit, so no reply is delayed; tests/test_sessions.py tests those):
    550 until the host is blocked, 554 once it is (the threshold is 10: the block is made as
    the tenth offence is recorded). A blocked host's next session is refused at the door,
    which ends the attack."""
    codes: list[int] = []
    for first in range(0, tries, 9):
        try:
            smtp = connect(relay, source)
        except smtplib.SMTPConnectError as e:
            assert e.smtp_code == 554, (e, codes)
            break
        with smtp:
            smtp.ehlo("attacker.test")
            if smtp.mail("x@attacker.test")[0] == 554:  # blocked since the last session
                break
            codes += [smtp.rcpt(f"guess{i}@example.org")[0]
                      for i in range(first, min(tries, first + 9))]
    assert set(codes) <= {550, 554} and codes == sorted(codes), codes  # 554 once blocked
    return codes


@pytest.fixture
def relay(start_relay, sqlite_url):  # type: ignore[no-untyped-def]
    return start_relay(sqlite_url, aliases=ALIASES, extra=SCORING % "1h")


def test_dictionary_attacker_is_blocked_at_next_connection(relay) -> None:  # type: ignore[no-untyped-def]
    dictionary_attack(relay, "127.0.0.9")  # allowlisted: scored, never blocked
    dictionary_attack(relay, "127.0.0.5")
    text = wait_until(lambda: refused_at_connect(relay, "127.0.0.5"), what="block")
    assert "5.7.1 Service unavailable; client [127.0.0.5] is blocked until" in str(text)
    assert refused_at_connect(relay, "127.0.0.6") is None
    assert refused_at_connect(relay, "127.0.0.9") is None
    # the scorer may run mid-attack: the block records what it had seen by then
    relay.wait_for_log(r"block network=127.0.0.5 score=\d+ level=1 .*reason=unknown_rcpt=\d+")
    relay.wait_for_log(r"decision .*client=127.0.0.5 stage=connect action=reject reason=blocked")
    shown = floodgate(relay.config, "hosts", "show", "127.0.0.9").stdout
    assert "never blocked: allowlisted (127.0.0.9/32)" in shown
    assert "unknown_rcpt │ 1      │ 20" in shown
    shown = floodgate(relay.config, "hosts", "show", "127.0.0.5").stdout
    assert "BLOCKED until" in shown


def test_block_expires_and_escalates(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES, extra=SCORING % "4s")
    dictionary_attack(relay, "127.0.0.5")
    wait_until(lambda: refused_at_connect(relay, "127.0.0.5"), what="block")
    # Knocking while blocked is an offence too (it extends the block), so watch the store
    # rather than the door until the block has run out.
    engine = make_engine(sqlite_url)
    wait_until(lambda: not blocks.active_blocks(engine), 40, "block expiry")
    wait_until(lambda: refused_at_connect(relay, "127.0.0.5") is None, 20, "let in again")
    first = blocks.load_blocks(engine)["127.0.0.5"]
    assert first.level == 1
    # back soon after: a longer block
    dictionary_attack(relay, "127.0.0.5")
    wait_until(lambda: refused_at_connect(relay, "127.0.0.5"), what="second block")
    second = wait_until(lambda: (b := blocks.load_blocks(engine)["127.0.0.5"]).level == 2
                        and b, what="level 2")
    assert second.expires - second.last_seen >= timedelta(seconds=8)  # 4s doubled
    engine.dispose()


def test_a_trap_blocks_at_once(relay) -> None:  # type: ignore[no-untyped-def]
    with connect(relay, "127.0.0.7") as smtp:
        smtp.ehlo("spammer.test")
        smtp.mail("x@spammer.test")
        unknown = smtp.rcpt("nobody@example.org")
        trap = smtp.rcpt("trap@example.org")
        assert trap[0] == 550
        assert trap == unknown  # the sender learns nothing
    wait_until(lambda: refused_at_connect(relay, "127.0.0.7"), what="trap block")


def test_manual_block_and_unblock(relay) -> None:  # type: ignore[no-untyped-def]
    out = floodgate(relay.config, "block", "add", "127.0.0.4", "--for", "1h", "--reason",
                    "abuse report").stdout
    assert out.startswith("blocked 127.0.0.4 until ")
    wait_until(lambda: refused_at_connect(relay, "127.0.0.4"), what="manual block")
    assert "abuse report" in floodgate(relay.config, "block", "list").stdout
    refused = floodgate(relay.config, "block", "add", "127.0.0.9", check=False)
    assert refused.returncode == 1
    assert "127.0.0.9 is never blocked: allowlisted" in refused.stderr
    floodgate(relay.config, "block", "remove", "127.0.0.4")
    wait_until(lambda: refused_at_connect(relay, "127.0.0.4") is None, what="unblock")
    floodgate(relay.config, "block", "add", "127.0.0.0/29", "--for", "1h")
    wait_until(lambda: refused_at_connect(relay, "127.0.0.3"), what="network block")
    assert refused_at_connect(relay, "127.0.0.1") is None  # the relay's own address
    floodgate(relay.config, "allow", "add", "127.0.0.3")
    wait_until(lambda: refused_at_connect(relay, "127.0.0.3") is None, what="allow wins")
    assert refused_at_connect(relay, "127.0.0.2")


def test_offences_on_one_relay_block_on_the_other(start_relay, postgres) -> None:  # type: ignore[no-untyped-def]
    url = postgres.create_database()
    one = start_relay(url, name="one", aliases=ALIASES, extra=SCORING % "1h")
    two = start_relay(url, name="two", extra=SCORING % "1h")
    dictionary_attack(one, "127.0.0.8")
    wait_until(lambda: refused_at_connect(two, "127.0.0.8"), what="block seen by relay two")
    engine = make_engine(url)
    assert list(blocks.load_blocks(engine)) == ["127.0.0.8"]  # one row, not one per relay
    engine.dispose()


def test_dnsbl_listed_host_is_refused_at_connect(start_relay, sqlite_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.dnsbl_fixtures import run_rbldnsd

    with run_rbldnsd(tmp_path / "rbldnsd") as dns:
        dnsbl = f"""
[dnsbl]
nameserver = "{dns.nameserver}"
reject_score = 3
[dnsbl.zones."zen.example"]
weight = 3
codes = ["127.0.0.2-127.0.0.11"]
[dnsbl.zones."bl.example"]
weight = 1
"""
        relay = start_relay(sqlite_url, aliases=ALIASES, extra=SCORING % "1h" + dnsbl)
        text = refused_at_connect(relay, "127.0.0.2")
        assert unref(text) == ("5.7.1 Service unavailable; client [127.0.0.2] blocked using "
                        "zen.example")
        assert refused_at_connect(relay, "127.0.0.41") is None  # bl.example alone: 1 < 3
        assert refused_at_connect(relay, "127.0.0.30") is None  # an error answer
        assert refused_at_connect(relay, "127.0.0.9") is None  # allowlisted: not even asked
        relay.wait_for_log(r"client=127.0.0.2 stage=connect action=reject reason=dnsbl code=554")
        shown = floodgate(relay.config, "hosts", "show", "127.0.0.40").stdout
        assert "DNSBL score 4 (reject at 3): refused at connect" in shown
        assert "listed in zen.example: 127.0.0.2 (weight 3)" in shown


def test_a_harvester_is_blocked_at_once(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """The periodic scorer runs hourly here: only the relay's running score can block."""
    extra = (SCORING % "1h").replace('interval = "0.2s"', 'interval = "1h"')
    relay = start_relay(sqlite_url, aliases=ALIASES, extra=extra)
    with connect(relay, "127.0.0.5") as smtp:
        smtp.ehlo("attacker.test")
        smtp.mail("x@attacker.test")
        assert {smtp.rcpt(f"guess{i}@example.org")[0] for i in range(10)} == {550}
        text = wait_until(lambda: refused_at_connect(relay, "127.0.0.5"), what="block")
        assert "is blocked until" in str(text)
        assert smtp.rcpt("alice@example.org")[0] == 554  # and this session learns no more
    relay.wait_for_log(r"block network=127.0.0.5 score=10 level=1 .*reason=unknown_rcpt=10")


def test_a_session_opened_before_the_block_ends_at_its_next_transaction(relay) -> None:  # type: ignore[no-untyped-def]
    with connect(relay, "127.0.0.6") as smtp:
        smtp.ehlo("early.test")
        assert smtp.mail("a@early.test")[0] == 250
        floodgate(relay.config, "block", "add", "127.0.0.6", "--for", "1h")
        wait_until(lambda: refused_at_connect(relay, "127.0.0.6"), what="block")
        code, text = smtp.rcpt("alice@example.org")
        assert (code, text.decode()[:45]) == (554, "5.7.1 Service unavailable; client [127.0.0.6]")
        smtp.rset()
        code, text = smtp.mail("a@early.test")
        assert code == 554 and text.decode().startswith("5.7.1 ") and b"is blocked until" in text
    relay.wait_for_log(r"client=127.0.0.6 stage=mail action=reject reason=blocked code=554")


def test_hosts_of_one_network_are_blocked_together(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """Four hosts of 127.0.0.0/24 at 8 offences each: none reaches 10, the /24 reaches 30."""
    extra = """
[scoring]
threshold = 10
network_threshold = 30
interval = "0.2s"
window = "1h"
[blocklist]
protect_loopback = false
"""
    relay = start_relay(sqlite_url, aliases=ALIASES, extra=extra)
    for host in (10, 11, 12, 13):
        dictionary_attack(relay, f"127.0.0.{host}", tries=8)
    text = wait_until(lambda: refused_at_connect(relay, "127.0.0.20"), what="network block")
    assert "client [127.0.0.20] is blocked until" in str(text)
    assert refused_at_connect(relay, "127.0.0.1") is None  # the relay's own address
    relay.wait_for_log(r"block network=127.0.0.0/24 score=3\d level=1 .*reason=unknown_rcpt=3\d")


def test_manual_unblock_sticks_while_relays_still_refuse(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """Relays refuse from their snapshot until their next refresh after an unblock; the
    host knocking meanwhile must not be blocked again by those refusals. The refresh is an
    hour and SIGHUP stands for it, so the window is the test's, not the scheduler's."""
    from relay.config import load_config
    from relay.hosts.scorer import Scorer
    from tests.support import event_count

    relay = start_relay(sqlite_url, aliases=ALIASES, extra=SCORING % "1h",
                        refresh="1h")
    floodgate(relay.config, "block", "add", "127.0.0.4", "--for", "1h")
    relay.signal(signal.SIGHUP)
    wait_until(lambda: refused_at_connect(relay, "127.0.0.4"), what="manual block")
    floodgate(relay.config, "block", "remove", "127.0.0.4")
    refusals = 0
    while refusals < 12:  # the relay still refuses from its snapshot
        assert refused_at_connect(relay, "127.0.0.4")
        refusals += 1
    engine = make_engine(sqlite_url)
    wait_until(lambda: event_count(engine) >= refusals + 1, what="refusals stored")
    config = load_config(str(relay.config))
    scorer = Scorer(engine, config.scoring, config.blocklist, relay_protection(config), "test")
    assert scorer.run_once() == []  # enough refusals to pass the threshold, had they counted
    assert not blocks.active_blocks(engine)
    relay.signal(signal.SIGHUP)
    wait_until(lambda: refused_at_connect(relay, "127.0.0.4") is None, what="unblock seen")
    engine.dispose()


def relay_protection(config):  # type: ignore[no-untyped-def]
    from blocklist.protection import Protection

    return Protection.of_config(config)


def test_a_bulk_sender_sending_the_rest_later_is_not_blocked(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """max_recipients is 5: 30 recipients get 25 x 452 4.5.3 in the first transaction, and
    the sender sends them on in later ones, as RFC 5321 asks."""
    from relay.config import load_config
    from relay.hosts.scorer import Scorer
    from tests.support import event_count

    relay = start_relay(sqlite_url, aliases=ALIASES, extra=SCORING % "1h")
    pending = [f"reader{i}@catchall.test" for i in range(30)]
    transactions = 0
    with connect(relay, "127.0.0.3") as smtp:
        while pending:
            refused = smtp.sendmail("news@bulk.test", pending, MESSAGE)
            assert {code for code, _ in refused.values()} <= {452}
            pending = [r for r in pending if r in refused]
            transactions += 1
    assert transactions == 6
    engine = make_engine(sqlite_url)
    wait_until(lambda: event_count(engine) >= 1 + 30 + 25 + 6, what="events stored")
    config = load_config(str(relay.config))
    scorer = Scorer(engine, config.scoring, config.blocklist, relay_protection(config), "test")
    assert scorer.run_once() == []
    assert refused_at_connect(relay, "127.0.0.3") is None
    engine.dispose()
