"""Floodgate beside an existing Postfix: Debian's postfix, started here with its own config
directory, relays the test domains to a sink and asks `floodgate policy` (client and
recipient checks) and `floodgate milter` (content) running on a real store, clamd and spamd.
"""

from __future__ import annotations

import contextlib
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dns_server import run_nsd
from tests.make_fixtures import SIG_EICAR
from tests.postfix_mta import Postfix
from tests.services import MESSAGES
from tests.sink import Sink
from tests.support import (
    RelayProcess,
    floodgate,
    free_port,
    split_ref,
    unref,
    wait_until,
    write_config,
)
from tests.test_blocking import SCORING
from tests.test_content import scanners
from tests.test_smtp import ALIASES

pytest_plugins = ["tests.scanner_fixtures"]  # real clamd and spamd, session-wide


AUTH_ZONE = ['@ IN TXT "v=spf1 ip4:127.0.0.1 -all"', '_dmarc IN TXT "v=DMARC1; p=reject"',
             'fail IN TXT "v=spf1 -all"', '_dmarc.fail IN TXT "v=DMARC1; p=reject"']


@dataclass
class Adopted:
    postfix: Postfix
    policy: RelayProcess
    milter: RelayProcess
    sink: Sink
    config: Path


def eml(name: str) -> bytes:
    return (MESSAGES / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.fixture
def adopted(request, tmp_path: Path, postgres, clamd, spamd) -> Iterator[Adopted]:  # type: ignore[no-untyped-def]
    """The stack; the milter on 127.0.0.1:PORT, or (indirect parameter "unix") on a unix
    socket in Postfix's directory, which its smtpd (user postfix) can reach."""
    sink = Sink().up()
    postfix = Postfix(sink.port, "")
    policy_port, milter_port = free_port(), free_port()
    milter_at = f"127.0.0.1:{milter_port}"
    kind = getattr(request, "param", "inet")
    if kind == "unix":
        milter_at = str(postfix.dir / "floodgate-milter.sock")
    auth = ""
    if kind == "auth":  # [auth] on, the senders' SPF and DMARC served by nsd
        served = contextlib.ExitStack()
        request.addfinalizer(served.close)
        dns = served.enter_context(run_nsd(tmp_path / "dns", {"sender.test": AUTH_ZONE}))
        auth = f'[auth]\nenabled = true\nnameserver = "{dns.nameserver}"\n'
    config = write_config(tmp_path / "floodgate.toml", store_url=postgres.create_database(),
                          port=free_port(),
                          extra=SCORING % "1h" + scanners(clamd.unix_address, spamd.address)
                          + auth)
    (tmp_path / "aliases.txt").write_text(ALIASES)
    floodgate(config, "aliases", "import", "--format", "list", str(tmp_path / "aliases.txt"))
    policy = RelayProcess(config, policy_port, log_name="policy", command=(
        "policy", "--listen", f"127.0.0.1:{policy_port}")).start()
    milter = RelayProcess(config, milter_port, log_name="milter", command=(
        "milter", "--listen", milter_at)).start()
    postfix.main_cf = f"""\
# the operator's guide (README "Beside an existing Postfix"), as tested
smtpd_delay_reject = no
smtpd_client_restrictions = check_policy_service inet:127.0.0.1:{policy_port}
smtpd_relay_restrictions = permit_mynetworks, check_policy_service inet:127.0.0.1:{policy_port},
    reject_unauth_destination
smtpd_milters = {"unix:" if milter_at.startswith("/") else "inet:"}{milter_at}
milter_default_action = tempfail
in_flow_delay = 0
"""
    postfix.start()
    try:
        yield Adopted(postfix, policy, milter, sink, config)
    finally:
        postfix.stop()
        for proc in (policy, milter):
            proc.stop()
        sink.down()


def connect(postfix: Postfix, source: str = "127.0.0.1") -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", postfix.port, timeout=30, source_address=(source, 0))


def refused_at_connect(postfix: Postfix, source: str) -> str | None:
    try:
        connect(postfix, source).quit()
    except smtplib.SMTPConnectError as e:
        return f"{e.smtp_code} {e.smtp_error.decode()}"
    return None


def test_dictionary_attacker_through_postfix_is_blocked(adopted: Adopted) -> None:
    postfix = adopted.postfix
    codes: list[int] = []
    replies: list[str] = []
    for _ in range(3):
        try:
            smtp = connect(postfix, "127.0.0.5")
        except smtplib.SMTPConnectError:  # blocked between two sessions: the attack is over
            break
        with smtp:
            smtp.ehlo("attacker.test")
            smtp.mail("x@attacker.test")
            for i in range(9):
                code, text = smtp.rcpt(f"guess{len(codes)}-{i}@example.org")
                codes.append(code)
                replies.append(text.decode())
            if 554 in codes:
                break
    # Postfix says the relay's code and text (after its own "<address>: ... rejected:")
    assert codes[0] == 550
    text, _ = split_ref(replies[0])
    assert text.startswith("5.1.1 ") and text.endswith("User unknown in virtual alias table")
    refusal = wait_until(lambda: refused_at_connect(postfix, "127.0.0.5"), what="the block")
    assert str(refusal).startswith("554 ")
    assert "Service unavailable; client [127.0.0.5] is blocked until" in str(refusal)
    assert refused_at_connect(postfix, "127.0.0.6") is None
    shown = floodgate(adopted.config, "hosts", "show", "127.0.0.5").stdout
    assert "BLOCKED until" in shown
    adopted.policy.wait_for_log(r"block network=127.0.0.5 .*reason=unknown_rcpt=\d+")
    # each a whole RCPT decision, as the relay records it: HELO, sender, recipient
    adopted.policy.wait_for_log(r"decision .*client=127.0.0.5 stage=rcpt action=reject "
                                r"reason=unknown_rcpt code=550 helo=attacker.test "
                                r"sender=<x@attacker.test> rcpt=guess0-0@example.org")


def test_relay_attempt_gets_the_relays_refusal(adopted: Adopted) -> None:
    with connect(adopted.postfix) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("x@sender.test")
        code, reply = smtp.rcpt("someone@elsewhere.test")
    assert code == 554
    text, _ = split_ref(reply.decode())
    assert text.startswith("5.7.1 ") and text.endswith("Relay access denied")
    adopted.policy.wait_for_log(r"decision .*client=127.0.0.1 stage=rcpt action=reject "
                                r"reason=relay_denied code=554")


def test_virus_gets_the_relays_554_through_postfix(adopted: Adopted) -> None:
    with connect(adopted.postfix) as smtp, pytest.raises(smtplib.SMTPDataError) as refused:
        smtp.sendmail("s@sender.test", ["bob@example.org"], eml("eicar.eml"))
    assert refused.value.smtp_code == 554
    text, ref = split_ref(refused.value.smtp_error.decode())
    assert text.startswith(f"5.7.1 Virus found: {SIG_EICAR}")  # the relay's own, whole
    adopted.milter.wait_for_log(rf"decision session={ref} client=127.0.0.1 stage=data "
                                r"action=reject reason=virus code=554")
    assert adopted.sink.received == []


def test_clean_mail_arrives_with_floodgates_headers(adopted: Adopted) -> None:
    forged = b"X-Spam-Flag: NO\r\nX-Spam-Score: -100\r\n" + eml("clean.eml")
    with connect(adopted.postfix) as smtp:
        smtp.sendmail("s@sender.test", ["bob@example.org"], forged)
    wait_until(lambda: adopted.sink.received, 30, "delivery to the sink")
    head = adopted.sink.received[0].data.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"X-Spam-Flag: NO") == 1
    assert b"\r\nX-Spam-Score: " in head and b"X-Spam-Score: -100" not in head
    assert b"X-Spam-Status: No, score=" in head
    adopted.milter.wait_for_log(r"decision .*client=127.0.0.1 stage=data action=accept "
                                r"reason=accepted code=250")


@pytest.mark.parametrize("adopted", ["auth"], indirect=True)
def test_milter_authenticates_through_postfix(adopted: Adopted) -> None:
    """[auth] on: the sender's Authentication-Results claiming our id is gone, ours is
    there once; a DMARC p=reject failure gets the relay's 550 5.7.1 from Postfix."""
    forged = (b"Authentication-Results: mx1.example.net; dmarc=pass\r\n"
              b"From: s@sender.test\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nHi.\r\n")
    with connect(adopted.postfix) as smtp:
        smtp.sendmail("s@sender.test", ["bob@example.org"], forged)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("s@fail.sender.test", ["bob@example.org"],
                          forged.replace(b"From: s@sender.test", b"From: s@fail.sender.test"))
    assert (refused.value.smtp_code, unref(refused.value.smtp_error)) == (
        550, "5.7.1 DMARC policy of fail.sender.test rejects this message")
    wait_until(lambda: adopted.sink.received, 30, "delivery to the sink")
    head = adopted.sink.received[0].data.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"Authentication-Results: mx1.example.net;") == 1, head
    assert b"dmarc=pass (aligned spf) header.from=sender.test" in head.replace(
        b"\r\n\t", b" "), head


@pytest.mark.parametrize("adopted", ["unix"], indirect=True)
def test_milter_on_a_unix_socket(adopted: Adopted) -> None:
    with connect(adopted.postfix) as smtp, pytest.raises(smtplib.SMTPDataError) as refused:
        smtp.sendmail("s@sender.test", ["bob@example.org"], eml("eicar.eml"))
    assert unref(refused.value.smtp_error.decode()).startswith("5.7.1 Virus found: ")
    with connect(adopted.postfix) as smtp:
        smtp.sendmail("s@sender.test", ["bob@example.org"], eml("clean.eml"))
    wait_until(lambda: adopted.sink.received, 30, "delivery to the sink")
    assert b"\r\nX-Spam-Score: " in adopted.sink.received[0].data


def test_milter_down_postfix_tempfails(adopted: Adopted) -> None:
    adopted.milter.stop()
    with connect(adopted.postfix) as smtp:
        with pytest.raises(smtplib.SMTPResponseException) as failed:
            smtp.ehlo("client.test")
            code, reply = smtp.mail("s@sender.test")
            if code >= 400:
                raise smtplib.SMTPResponseException(code, reply)
            smtp.rcpt("bob@example.org")
            smtp.data(eml("clean.eml"))
        assert 400 <= failed.value.smtp_code < 500, failed.value
    assert adopted.sink.received == []
