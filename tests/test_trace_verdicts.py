"""`floodgate trace` shows each filter's own verdict through a running relay: clamd's
(clean or the virus name) and spamd's (score against the threshold), each from a fresh scan
or from the verdict cache, and the DNSBL's zones and codes of a connection it let in."""

from __future__ import annotations

import smtplib

from tests.make_fixtures import SIG_EICAR
from tests.support import floodgate, split_ref, wait_until
from tests.test_blocking import connect
from tests.test_content import eml, scanners
from tests.test_smtp import ALIASES
from tests.test_trace import queue, reasons_stored, trace_json

pytest_plugins = ["tests.scanner_fixtures"]  # real clamd and spamd, session-wide


def verdicts(story: dict, stage: str) -> dict[str, tuple[str, str]]:  # type: ignore[type-arg]
    """{filter: (verdict, source)} of the story's one `stage` event."""
    [event] = [e for e in story["events"] if e["stage"] == stage]
    return {v["filter"]: (v["verdict"], v["source"]) for v in event["verdicts"]}


def test_scanner_verdicts_scanned_then_cached(start_relay, sqlite_url, clamd, spamd) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra=scanners(clamd.unix_address, spamd.address))
    clean = eml("clean.eml")
    first, ref = queue(relay, "s@sender.test", "bob@example.org", clean)
    second, _ = queue(relay, "s@sender.test", "bob@example.org", clean)
    wait_until(lambda: reasons_stored(sqlite_url, "accepted") == 2, what="both messages")

    [story] = trace_json(relay, first)["sessions"]
    fresh = verdicts(story, "data")
    assert fresh["clamav"] == ("clean", "scanned")
    score, source = fresh["spamassassin"]
    assert source == "scanned"
    assert score.endswith("/10.0,tag:5.0")  # score against the refusing threshold
    [story] = trace_json(relay, second)["sessions"]
    assert verdicts(story, "data") == {"clamav": ("clean", "cached"),
                                       "spamassassin": (score, "cached")}
    shown = floodgate(relay.config, "trace", ref).stdout
    assert "clamav=clean(scanned)" in shown and f"spamassassin={score}(scanned)" in shown


def test_a_virus_and_a_spams_refusal_name_their_verdicts(  # type: ignore[no-untyped-def]
        start_relay, sqlite_url, clamd, spamd) -> None:
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra=scanners(clamd.unix_address, spamd.address))
    refs = []
    for name in ("eicar.eml", "gtube.eml"):
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as smtp:
            smtp.ehlo("sender.test")
            smtp.mail("s@sender.test")
            assert smtp.rcpt("bob@example.org")[0] == 250
            code, text = smtp.data(eml(name))
        assert code in (554, 550)
        refs.append(split_ref(text)[1])
    wait_until(lambda: reasons_stored(sqlite_url, "spam") == 1, what="the spam refusal")

    [virus] = trace_json(relay, refs[0])["sessions"]
    found = verdicts(virus, "data")
    [step] = [e for e in virus["events"] if e["stage"] == "data"]
    assert found["clamav"] == (step["detail"].split()[0], "scanned")  # the signature
    assert found["clamav"][0].startswith(SIG_EICAR)
    assert "spamassassin" not in found  # clamd ended it
    [spam] = trace_json(relay, refs[1])["sessions"]
    found = verdicts(spam, "data")
    assert found["clamav"] == ("clean", "scanned")
    score, threshold = found["spamassassin"][0].split(",")[0].split("/")
    assert float(score) >= float(threshold) == 10.0
    # the report still counts the virus by its name alone
    summary = floodgate(relay.config, "report", "summary", "--format", "json").stdout
    assert f'"{step["detail"].split()[0]}": 1' in summary


def test_an_accepted_connections_dnsbl_zones_and_codes(start_relay, sqlite_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.dnsbl_fixtures import run_rbldnsd

    with run_rbldnsd(tmp_path / "rbldnsd") as dns:
        relay = start_relay(sqlite_url, aliases=ALIASES, extra=f"""
[dnsbl]
nameserver = "{dns.nameserver}"
reject_score = 3
[dnsbl.zones."zen.example"]
weight = 1
codes = ["127.0.0.2-127.0.0.11"]
[dnsbl.zones."bl.example"]
weight = 1
[blocklist]
protect_loopback = false
""")
        for source in ("127.0.0.5", "127.0.0.9"):  # listed under the threshold; not listed
            with connect(relay, source) as smtp:
                assert smtp.ehlo("sender.test")[0] == 250
        wait_until(lambda: reasons_stored(sqlite_url, "connect") == 2, what="both connects")
        [listed] = trace_json(relay, "--client", "127.0.0.5")["sessions"]
        [clean] = trace_json(relay, "--client", "127.0.0.9")["sessions"]
    [step] = [e for e in listed["events"] if e["stage"] == "connect"]
    assert step["action"] == "accept"
    verdict, source = verdicts(listed, "connect")["dnsbl"]
    assert source == "looked_up"
    assert verdict == "1/3,zen.example:127.0.0.10+127.0.0.4*1"  # two codes, one zone
    assert verdicts(clean, "connect") == {"dnsbl": ("clean", "looked_up")}
    shown = floodgate(relay.config, "trace", "--client", "127.0.0.5").stdout
    assert f"dnsbl={verdict}(looked_up)" in shown
