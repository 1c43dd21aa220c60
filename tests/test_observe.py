"""Observe mode ([policy]) through running relays: the refusals of scoring, blocking and
DNSBL are recorded as would-have-refused (action `observe`) and the session goes on;
unknown recipients and viruses are refused in every mode."""

from __future__ import annotations

import json
import smtplib

from tests.support import floodgate, wait_until
from tests.test_blocking import SCORING, connect, refused_at_connect
from tests.test_smtp import ALIASES

pytest_plugins = ["tests.scanner_fixtures"]  # real clamd and spamd, session-wide

OBSERVE = '\n[policy]\nmode = "observe"\n'


def guesses(relay, source: str, domain: str, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    """RCPT codes of `n` unknown recipients at `domain`, 9 per session."""
    codes: list[int] = []
    for first in range(0, n, 9):
        with connect(relay, source) as smtp:
            smtp.ehlo("attacker.test")
            assert smtp.mail("x@attacker.test")[0] == 250
            codes += [smtp.rcpt(f"guess{i}@{domain}")[0]
                      for i in range(first, min(n, first + 9))]
    return codes


def host_row(relay, host: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    rows = json.loads(floodgate(relay.config, "report", "hosts", "--format", "json").stdout)
    return next(r for r in rows if r["host"] == host)


def test_a_dictionary_attacker_is_not_blocked_but_reported(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES, extra=SCORING % "1h" + OBSERVE)
    assert guesses(relay, "127.0.0.5", "example.org", 20) == [550] * 20  # user unknown
    relay.wait_for_log(r"block network=127.0.0.5 score=\d+ level=1 .*reason=unknown_rcpt")
    # the would-be block is recorded: the next connection is let in, and recorded
    assert refused_at_connect(relay, "127.0.0.5") is None
    relay.wait_for_log(r"decision .*client=127.0.0.5 stage=connect action=observe "
                       r"reason=blocked code=554")
    with connect(relay, "127.0.0.5") as smtp:
        smtp.ehlo("attacker.test")
        assert smtp.mail("x@attacker.test")[0] == 250
        assert smtp.rcpt("guess99@example.org")[0] == 550  # the alias table still rules
        assert smtp.rcpt("alice@example.org")[0] == 250
    shown = floodgate(relay.config, "hosts", "show", "127.0.0.5").stdout
    assert "not blocked (observe mode): would have been blocked until" in shown
    assert "BLOCKED" not in shown
    row = wait_until(lambda: (r := host_row(relay, "127.0.0.5"))["observed"] >= 2 and r,
                     what="observed refusals in the report")
    assert row["blocked"] == 0 and row["blocked_until"] is None
    assert row["unknown_rcpt"] == 21
    # nothing for a firewall: the block is only a record
    assert floodgate(relay.config, "blocklist", "export", "--format", "plain").stdout == ""


def test_a_dnsbl_listed_client_gets_through_observed(start_relay, sqlite_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.dnsbl_fixtures import run_rbldnsd

    with run_rbldnsd(tmp_path / "rbldnsd") as dns:
        dnsbl = f"""
[dnsbl]
nameserver = "{dns.nameserver}"
reject_score = 3
[dnsbl.zones."zen.example"]
weight = 3
codes = ["127.0.0.2-127.0.0.11"]
"""
        relay = start_relay(sqlite_url, aliases=ALIASES, extra=SCORING % "1h" + dnsbl + OBSERVE)
        with connect(relay, "127.0.0.2") as smtp:  # 220, not 554
            smtp.sendmail("s@sender.test", ["alice@example.org"], b"Subject: hi\r\n\r\nHi.\r\n")
        relay.wait_for_log(r"client=127.0.0.2 stage=connect action=observe reason=dnsbl "
                           r"code=554 .*detail=.*zen.example")
        relay.wait_for_log(r"client=127.0.0.2 stage=data action=accept reason=accepted")
        row = wait_until(lambda: (r := host_row(relay, "127.0.0.2"))["observed"] and r,
                         what="observed refusal in the report")
        assert row["observed"] == 1 and row["dnsbl"] == 0 and row["accepted"] == 1
        # the summary and the timeline count it as its own outcome, not as a refusal, and
        # its event as no second connection
        summary = json.loads(floodgate(relay.config, "report", "summary", "--format",
                                       "json").stdout)
        assert summary["connections"] == 1
        assert summary["outcomes"]["observed"] == 1 and summary["outcomes"]["dnsbl"] == 0
        assert summary["outcomes"]["accepted"] == 1
        timeline = json.loads(floodgate(relay.config, "report", "timeline", "--format",
                                        "json").stdout)
        assert all("observed" in b for b in timeline["buckets"])
        assert sum(b["observed"] for b in timeline["buckets"]) == 1
        assert sum(b["dnsbl"] for b in timeline["buckets"]) == 0
        table = floodgate(relay.config, "report", "summary").stdout
        assert "observed (would have refused)" in table


def test_a_virus_is_refused_in_observe_mode(start_relay, sqlite_url, clamd) -> None:  # type: ignore[no-untyped-def]
    from tests.test_content import eml

    relay = start_relay(sqlite_url, aliases=ALIASES, extra=f"""
[clamav]
address = "{clamd.unix_address}"
timeout = "3s"
""" + OBSERVE)
    with connect(relay, "127.0.0.7") as smtp:
        try:
            smtp.sendmail("s@sender.test", ["alice@example.org"], eml("eicar.eml"))
        except smtplib.SMTPDataError as e:
            code, reply = e.smtp_code, e.smtp_error.decode()
        else:
            code, reply = 250, ""
    assert code == 554 and reply.startswith("5.7.1 Virus found: ")
    relay.wait_for_log(r"stage=data action=reject reason=virus code=554")


def test_observe_for_one_domain_enforce_for_another(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    policy = '\n[policy.domains]\n"example.net" = "observe"\n'
    relay = start_relay(sqlite_url, aliases=ALIASES, extra=SCORING % "1h" + policy)
    codes = guesses(relay, "127.0.0.5", "example.org", 18)
    assert set(codes) <= {550, 554} and codes == sorted(codes)  # 554 once blocked
    relay.wait_for_log(r"block network=127.0.0.5 score=\d+ level=1")
    # blocked, but example.net observes: let in; its recipient passes, example.org's not
    assert refused_at_connect(relay, "127.0.0.5") is None
    with connect(relay, "127.0.0.5") as smtp:
        smtp.ehlo("attacker.test")
        assert smtp.mail("x@attacker.test")[0] == 250
        code, text = smtp.rcpt("alice@example.org")
        assert code == 554 and b"is blocked until" in text
        assert smtp.rcpt("carol@example.net")[0] == 250
    relay.wait_for_log(r"client=127.0.0.5 stage=rcpt action=observe reason=blocked code=554 "
                       r".*rcpt=carol@example.net")
    shown = floodgate(relay.config, "hosts", "show", "127.0.0.5").stdout
    assert "BLOCKED until" in shown
    # a firewall would refuse example.net's mail too: nothing is exported
    assert floodgate(relay.config, "blocklist", "export", "--format", "plain").stdout == ""
