"""Sender lists (`floodgate sender block|allow`) against a running relay, and the one
precedence across every layer, as a table:

    client allowlist > sender allowlist > blocks > DNSBL > content

A real rbldnsd lists the client, a real clamd finds the virus, and the lists are changed
with the CLI the way an operator does."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from relay.store.database import make_engine
from relay.store.web_tables import AuditEntry
from tests.services import MESSAGES
from tests.support import RelayProcess, floodgate, free_port, unref, write_config
from tests.test_smtp import ALIASES
from tests.web_support import ADMIN, ADMIN_NAME, READ, relay_extra, web_starter

pytest_plugins = ["tests.scanner_fixtures"]  # real clamd, session-wide

CLEAN = (MESSAGES / "clean.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
VIRUS = (MESSAGES / "eicar.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

CLIENTS = {  # zen.example lists 127.0.0.2 and 127.0.0.3 (fixtures/dnsbl/)
    "allowlisted": "127.0.0.2",  # listed too, and in [blocklist] allow
    "listed": "127.0.0.3",
    "plain": "127.0.0.6",
    "blocked": "127.0.0.7",  # `floodgate block add`
}
SENDERS = {
    "allowed": "news@partner.example",  # domain on the allow list
    "allowed_address": "boss@spam.test",  # address allowed, its domain blocked
    "blocked": "x@Mail.SPAM.test",  # a subdomain of a blocked domain, in another case
    "neutral": "someone@other.test",
}


def expected(client: str, sender: str, content: str) -> tuple[str, int]:
    """(stage, code) of the relay's answer, by the documented precedence."""
    if client == "blocked":  # at the door, before any sender is known
        return "connect", 554
    if client != "allowlisted":
        if sender == "blocked":
            return "mail", 554
        if client == "listed" and not sender.startswith("allowed"):
            return "rcpt", 554  # the DNSBL's refusal, waiting for a sender allow that did not come
    if content == "virus":  # content is scanned for everyone
        return "data", 554
    return "data", 250


def attempt(relay: RelayProcess, source: str, sender: str, message: bytes) -> tuple[str, int,
                                                                                     str]:
    """(stage, code, text) of the first refusal, or of the final reply to DATA."""
    try:
        smtp = smtplib.SMTP("127.0.0.1", relay.port, timeout=20, source_address=(source, 0))
    except smtplib.SMTPConnectError as e:
        return "connect", e.smtp_code, e.smtp_error.decode()
    with smtp:
        smtp.ehlo("mta.example")
        code, text = smtp.mail(sender)
        if code != 250:
            return "mail", code, text.decode()
        code, text = smtp.rcpt("alice@example.org")
        if code != 250:
            return "rcpt", code, text.decode()
        code, text = smtp.data(message)
        return "data", code, text.decode()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, clamd) -> Iterator[RelayProcess]:  # type: ignore[no-untyped-def]
    from tests.dnsbl_fixtures import run_rbldnsd

    tmp = tmp_path_factory.mktemp("senders")
    with run_rbldnsd(tmp / "rbldnsd") as dns:
        port = free_port()
        config = write_config(tmp / "relay.toml", store_url=f"sqlite:///{tmp}/floodgate.db",
                              port=port, extra=f"""
[dnsbl]
nameserver = "{dns.nameserver}"
reject_score = 3
[dnsbl.zones."zen.example"]
weight = 3
codes = ["127.0.0.2-127.0.0.11"]
[clamav]
address = "{clamd.address}"
timeout = "5s"
[blocklist]
protect_loopback = false
allow = ["127.0.0.2"]
""")
        (tmp / "aliases.txt").write_text(ALIASES)
        floodgate(config, "aliases", "import", "--format", "list", str(tmp / "aliases.txt"))
        floodgate(config, "block", "add", "127.0.0.7", "--reason", "test")
        floodgate(config, "sender", "block", "add", "spam.test", "--reason", "outbreak")
        floodgate(config, "sender", "allow", "add", "partner.example")
        floodgate(config, "sender", "allow", "add", "Boss@SPAM.test")
        process = RelayProcess(config, port).start()
        try:
            yield process
        finally:
            process.stop()


@pytest.mark.parametrize("content", ["clean", "virus"])
@pytest.mark.parametrize("sender", list(SENDERS))
@pytest.mark.parametrize("client", list(CLIENTS))
def test_precedence(relay: RelayProcess, client: str, sender: str, content: str) -> None:
    stage, code, text = attempt(relay, CLIENTS[client], SENDERS[sender],
                                VIRUS if content == "virus" else CLEAN)
    assert (stage, code) == expected(client, sender, content), text
    if stage == "mail":
        assert unref(f"{code} {text}") == (
            f"554 5.7.1 <{SENDERS[sender]}>: Sender address rejected: Access denied")


def test_cli_lists_and_audits(relay: RelayProcess) -> None:
    listed = floodgate(relay.config, "sender", "block", "list", "--format", "plain").stdout
    assert listed.split("\n")[:-1] == ["sender spam.test"]
    allowed = floodgate(relay.config, "sender", "allow", "list", "--format", "plain").stdout
    assert allowed.split("\n")[:-1] == ["sender boss@spam.test", "sender partner.example"]
    again = floodgate(relay.config, "sender", "block", "add", "SPAM.test.").stdout
    assert again.strip() == "sender spam.test was already on the block list"
    missing = floodgate(relay.config, "sender", "allow", "remove", "nobody.test", check=False)
    assert missing.returncode != 0 and "not on the sender allow list" in missing.stderr


def test_hostile_entries_are_refused_whole(relay: RelayProcess) -> None:
    long = "a" * 990 + "@spam.test"
    for bad in (long, "a@b@", "x y@spam.test", "spam..test", "-bad-.test"):
        run = floodgate(relay.config, "sender", "block", "add", "--", bad, check=False)
        assert run.returncode == 2 and "Invalid value" in run.stderr, (bad, run.stderr)


def test_idn_case_from_header_and_helo(start_relay, sqlite_url, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra="[blocklist]\nprotect_loopback = false")
    config = relay.config
    added = floodgate(config, "sender", "block", "add", "Bücher.Example").stdout
    assert added.strip() == "block: sender xn--bcher-kva.example"
    floodgate(config, "sender", "block", "add", "--helo", "bad-helo.test")
    relay.wait_for_log(r"sender lists loaded generation=2 ")
    source = "127.0.0.6"
    # the envelope sender, as an A-label in another case
    assert attempt(relay, source, "X@XN--BCHER-KVA.example", CLEAN)[:2] == ("mail", 554)
    # the From header's domain, as a U-label in UTF-8 (RFC 6532): refused at the end of DATA
    from_idn = CLEAN.replace(b"alice@sender.example", "a@bücher.example".encode())
    stage, code, text = attempt(relay, source, "ok@other.test", from_idn)
    assert (stage, unref(f"{code} {text}")) == (
        "data", "554 5.7.1 <xn--bcher-kva.example>: From address rejected: Access denied")
    # the HELO name
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10, source_address=(source, 0)) as smtp:
        smtp.ehlo("mx.BAD-HELO.test")
        code, text = smtp.mail("ok@other.test")
        assert unref(f"{code} {text.decode()}") == (
            "554 5.7.1 <mx.BAD-HELO.test>: Helo command rejected: Access denied")
    # removed: mail flows again once the relay has the new lists
    floodgate(config, "sender", "block", "remove", "xn--bcher-kva.example")
    relay.wait_for_log(r"sender lists loaded generation=3 ")
    assert attempt(relay, source, "X@XN--BCHER-KVA.example", CLEAN)[:2] == ("data", 250)
    audit = floodgate(config, "sender", "block", "list", "--format", "plain").stdout
    assert audit.strip() == "helo bad-helo.test"
    relay.wait_for_log(r"reason=sender_blocked .*detail=\"?HELO mx.BAD-HELO.test matches "
                       r"bad-helo.test")


@pytest.fixture
def start_web():  # type: ignore[no-untyped-def]
    yield from web_starter()


def test_api_changes_reach_the_relay_and_are_audited(start_relay, start_web,  # type: ignore[no-untyped-def]
                                                     sqlite_url) -> None:
    relay = start_relay(sqlite_url, aliases=ALIASES, extra=relay_extra())
    web = start_web(relay.config)
    with web.client(ADMIN) as admin, web.client(READ) as reader:
        body = {"list": "block", "entry": "Spam.TEST", "reason": "outbreak"}
        assert reader.post("/api/senders", json=body).status_code == 403
        r = admin.post("/api/senders", json=body)
        assert r.status_code == 201 and r.json()["network"] == "spam.test", r.text
        relay.wait_for_log(r"sender lists loaded generation=1 ")
        assert attempt(relay, "127.0.0.6", "a@spam.test", CLEAN)[:2] == ("mail", 554)
        [row] = reader.get("/api/senders").json()
        assert (row["list"], row["field"], row["entry"], row["reason"]) == (
            "block", "sender", "spam.test", "outbreak")
        bad = {"list": "block", "entry": "a" * 990 + "@spam.test"}
        assert admin.post("/api/senders", json=bad).status_code == 422
        assert admin.delete("/api/senders/block/sender/SPAM.test").status_code == 200
        assert admin.delete("/api/senders/block/sender/spam.test").status_code == 404
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        rows = conn.execute(select(AuditEntry.who, AuditEntry.action, AuditEntry.target)
                            .order_by(AuditEntry.id)).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(ADMIN_NAME, "sender_block", "spam.test"),
                                        (ADMIN_NAME, "sender_unblock", "spam.test")]
