"""Content scanning through the running relay: real clamd and spamd, refusals at the end
of DATA with the right codes, headers on accepted mail, faults, and outbreak mode."""

from __future__ import annotations

import smtplib
import subprocess
from pathlib import Path

import pytest

from relay.delivery.spool import read_file
from tests.make_fixtures import SIG_CLAMEXE, SIG_EICAR, SIG_WORM, WORM_PAYLOAD, with_attachment
from tests.services import FakeService
from tests.support import FLOODGATE, ROOT, wait_until
from tests.test_smtp import ALIASES, client, spooled

pytest_plugins = ["tests.scanner_fixtures"]
MESSAGES = ROOT / "fixtures" / "messages"


def eml(name: str) -> bytes:
    """A fixture message with CRLF line ends, as it travels over SMTP."""
    return (MESSAGES / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def scanners(clamd: str, spamd: str, clamav_extra: str = "", spam_extra: str = "",
             spam_timeout: str = "3s") -> str:
    return f"""
[clamav]
address = "{clamd}"
timeout = "3s"
{clamav_extra}
[spamassassin]
address = "{spamd}"
timeout = "{spam_timeout}"
tag_score = 5
reject_score = 10
{spam_extra}
"""


def send(relay, message: bytes, rcpts=("bob@example.org",)):  # type: ignore[no-untyped-def]
    """(code, reply) of the end of DATA."""
    with client(relay) as smtp:
        try:
            smtp.sendmail("s@sender.test", list(rcpts), message)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode()
        return 250, "queued"


@pytest.fixture
def relay(start_relay, sqlite_url, clamd, spamd):  # type: ignore[no-untyped-def]
    return start_relay(sqlite_url, aliases=ALIASES,
                       extra=scanners(clamd.unix_address, spamd.address))


@pytest.mark.parametrize(("name", "signature"), [
    ("eicar.eml", SIG_EICAR), ("clam-zip.eml", SIG_CLAMEXE), ("clam-targz.eml", SIG_CLAMEXE),
    ("clam-uu.eml", SIG_CLAMEXE), ("forward-clam-zip.eml", SIG_CLAMEXE),
])
def test_viruses_are_refused_at_end_of_data(relay, name: str, signature: str) -> None:  # type: ignore[no-untyped-def]
    code, reply = send(relay, eml(name))
    assert code == 554
    assert reply.startswith("5.7.1 Virus found: ") and signature in reply
    assert spooled(relay) == []
    relay.wait_for_log(rf"stage=data action=reject reason=virus code=554 .*detail={signature}")


def test_spam_outcomes_under_the_thresholds(relay) -> None:  # type: ignore[no-untyped-def]
    code, reply = send(relay, eml("gtube.eml"))
    assert (code, reply[:5]) == (550, "5.7.1")
    assert send(relay, eml("sample-spam.eml"))[0] == 550
    assert send(relay, eml("sample-nonspam.eml")) == (250, "queued")
    [path] = spooled(relay)
    message = read_file(path)[1]
    assert b"\r\nX-Spam-Flag: NO\r\n" in message
    assert b"\r\nX-Spam-Score: " in message


def test_clean_mail_is_spooled_with_spam_headers_and_forgeries_stripped(relay) -> None:  # type: ignore[no-untyped-def]
    clean = eml("clean.eml")
    forged = b"X-Spam-Flag: NO\r\nX-Spam-Score: -100\r\n" + clean
    assert send(relay, forged) == (250, "queued")
    message = read_file(spooled(relay)[0])[1]
    head = message.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"X-Spam-Flag:") == 1
    assert b"X-Spam-Score: -100" not in head
    assert message.endswith(clean.split(b"\r\n\r\n", 1)[1])  # body byte for byte


def test_refused_recipients_never_reach_a_scanner(  # type: ignore[no-untyped-def]
        start_relay, sqlite_url, own_clamd, spamd) -> None:
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra=scanners(own_clamd.address, spamd.address))
    before = own_clamd.scans()
    with client(relay) as smtp:
        smtp.mail("s@sender.test")
        assert smtp.rcpt("ghost@example.org")[0] == 550
        assert smtp.docmd("DATA")[0] == 554
    assert send(relay, eml("clean.eml")) == (250, "queued")
    own_clamd.wait_scans(before + 1)
    assert own_clamd.scans() == before + 1


def test_worm_outbreak_costs_one_attachment_scan(start_relay, sqlite_url, own_clamd, spamd) -> None:  # type: ignore[no-untyped-def]
    # one session for all 1000: past smtpd_hard_error_limit (20) it would be cut off
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra=scanners(own_clamd.address, spamd.address) +
                        "[limits]\nsmtpd_hard_error_limit = 2000\nsmtpd_error_sleep_time = 0\n")
    before = own_clamd.scans()
    refused = 0
    with client(relay) as smtp:
        for i in range(1000):
            copy = with_attachment(f"Mail Transaction Failed #{i}", f"cover text {i}",
                                   WORM_PAYLOAD, f"doc{i}.pif", rcpt=f"user{i}@example.org",
                                   boundary=f"=_b{i}")
            smtp.mail(f"infected{i}@sender.test")
            smtp.rcpt("bob@example.org")
            code, reply = smtp.data(copy)
            refused += code == 554 and SIG_WORM.encode() in reply
    assert refused == 1000
    # the first copy is scanned whole and its attachment once; every later copy is a hit
    assert own_clamd.scans() - before == 2
    relay.wait_for_log(r"reason=virus code=554 .*detail=" + SIG_WORM)


def test_clamd_down_tempfails_then_recovers(start_relay, sqlite_url, own_clamd, spamd) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra=scanners(own_clamd.address, spamd.address,
                                       clamav_extra="[clamav.cache]\nenabled = false"))
    clean = eml("clean.eml")
    own_clamd.stop()
    code, reply = send(relay, clean)
    assert (code, reply[:5]) == (451, "4.3.0")
    assert spooled(relay) == []
    own_clamd.start()
    wait_until(lambda: send(relay, clean)[0] == 250, what="clamd back")


def test_spamd_that_hangs_tempfails(start_relay, sqlite_url, clamd) -> None:  # type: ignore[no-untyped-def]
    with FakeService("hang") as fake:
        relay = start_relay(sqlite_url, aliases=ALIASES,
                            extra=scanners(clamd.unix_address, fake.address,
                                           spam_timeout="1s"))
        code, reply = send(relay, eml("clean.eml"))
    assert (code, reply[:5]) == (451, "4.3.0")
    relay.wait_for_log(r"reason=spamassassin_error")


def test_garbage_from_clamd_tempfails_and_is_logged(start_relay, sqlite_url, spamd) -> None:  # type: ignore[no-untyped-def]
    with FakeService("garbage") as fake:
        relay = start_relay(sqlite_url, aliases=ALIASES,
                            extra=scanners(fake.address, spamd.address))
        code, reply = send(relay, eml("clean.eml"))
    assert (code, reply[:5]) == (451, "4.3.0")
    relay.wait_for_log(r"reason=clamav_error")


def test_accept_on_error_marks_the_message_unscanned(start_relay, sqlite_url, spamd) -> None:  # type: ignore[no-untyped-def]
    with FakeService("close") as fake:
        relay = start_relay(sqlite_url, aliases=ALIASES,
                            extra=scanners(fake.address, spamd.address,
                                           clamav_extra='on_error = "accept"'))
        assert send(relay, eml("clean.eml")) == (250, "queued")
    message = read_file(spooled(relay)[0])[1]
    assert b"\r\nX-Floodgate-Unscanned: clamav" in message


def test_scan_command(tmp_path: Path, clamd, spamd) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "floodgate.toml"
    config.write_text('[domains."example.org"]\nnext_hop = "127.0.0.1:25"\n'
                      + scanners(clamd.unix_address, spamd.address))
    run = subprocess.run([*FLOODGATE, "-c", str(config), "scan",
                          str(MESSAGES / "eicar.eml"), str(MESSAGES / "clean.eml")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    assert any(line.startswith(f"{MESSAGES / 'eicar.eml'}: clamav: reject 554 5.7.1 Virus "
                               f"found: {SIG_EICAR}") for line in lines), lines
    assert f"{MESSAGES / 'clean.eml'}: clamav: clean" in lines
    ok = subprocess.run([*FLOODGATE, "-c", str(config), "scan", str(MESSAGES / "clean.eml")],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert ok.returncode == 0
    assert "spamassassin: accept 250 2.0.0" in ok.stdout


@pytest.mark.parametrize(("hosted", "rule", "rcpt"), [
    ("bücher.example", "bücher.example", "user@xn--bcher-kva.example"),
    ("bücher.example", "xn--bcher-kva.example", "User@XN--BCHER-KVA.example"),
])
def test_spam_rule_for_a_domain_applies_in_either_form_of_its_name(  # type: ignore[no-untyped-def]
        start_relay, sqlite_url, clamd, spamd, hosted: str, rule: str, rcpt: str) -> None:
    """The recipient check, the aliases and delivery's routing take `bücher.example` and
    `xn--bcher-kva.example` as one domain (filters.address.normalise_domain, IDNA). The spam
    thresholds per domain only lower-cased theirs: a rule written with the U-label never
    applied, as clients send the A-label (the relay takes ASCII envelopes only)."""
    strict = f'[spamassassin.domains."{rule}"]\ntag_score = -1000\nreject_score = -1000\n'
    relay = start_relay(sqlite_url, aliases="user@bücher.example\n",
                        extra=f'[domains."{hosted}"]\nnext_hop = "127.0.0.1:2600"\n'
                        + scanners(clamd.unix_address, spamd.address, spam_extra=strict))
    code, reply = send(relay, eml("clean.eml"), rcpts=(rcpt,))
    assert (code, reply[:5]) == (550, "5.7.1"), reply
    assert spooled(relay) == []
