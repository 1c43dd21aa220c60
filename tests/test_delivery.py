"""Delivery to the next hop: a real relay process, a real SMTP sink, real sockets."""

from __future__ import annotations

import asyncio
import email
import json
import logging
import random
import signal
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from relay.config import load_config
from relay.config.types import parse_size
from relay.delivery import queue_admin
from relay.delivery.dsn import status_of
from relay.delivery.scheduler import backoff
from relay.delivery.service import DeliveryService
from relay.delivery.spool import MAGIC, Envelope, Spool, new_queue_id
from relay.events.writer import EventWriter
from relay.store.database import make_engine
from relay.store.tables import Event
from tests.sink import Sink
from tests.support import RelayProcess, floodgate, port_open, unref, wait_until, write_config

FAST = {"min_backoff": '"0.2s"', "max_backoff": '"1s"', "scan_interval": '"0.2s"',
        "connect_timeout": '"2s"', "command_timeout": '"10s"'}


def delivery_settings(delivery: str = "") -> str:
    """Two catch-all domains routed to the sink; short backoffs so tests run in seconds.
    `delivery` holds `key = value` lines that add to or replace those defaults."""
    settings = dict(FAST)
    for line in delivery.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            settings[key.strip()] = value.strip()
    return "\n".join(f"{k} = {v}" for k, v in settings.items())


def domains(hop: str) -> str:
    return f"""
[domains."dest.test"]
next_hop = "{hop}"
catch_all = true
[domains."sender.test"]
next_hop = "{hop}"
catch_all = true
"""


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.down()


def start(start_relay, url: str, hop: str, delivery: str = "", **kw: object) -> RelayProcess:  # type: ignore[no-untyped-def]
    return start_relay(url, extra=domains(hop), extra_delivery=delivery_settings(delivery), **kw)


def message(n: int | str, body: str = "Hello.\r\n") -> bytes:
    return (f"From: author@sender.test\r\nTo: someone@dest.test\r\nSubject: test {n}\r\n"
            f"Message-ID: <{n}@test.floodgate>\r\n\r\n{body}").encode()


def send(relay: RelayProcess, rcpts: list[str], data: bytes,
         sender: str = "author@sender.test", mail_options: tuple[str, ...] = ()) -> str:
    """One transaction; returns the queue id from the 250 reply."""
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        code, reply = smtp.mail(sender, list(mail_options))
        assert code == 250, reply
        for rcpt in rcpts:
            code, reply = smtp.rcpt(rcpt)
            assert code == 250, reply
        code, reply = smtp.data(data)
        assert code == 250, reply
        return unref(reply).rsplit(" ", 1)[1]


def queue_dir(relay: RelayProcess) -> Path:
    return relay.config.parent / f"spool-{relay.config.stem}" / "queue"


def queued(relay: RelayProcess) -> list[str]:
    return sorted(p.stem for p in queue_dir(relay).glob("*.msg"))


def delivery_events(relay: RelayProcess, url: str) -> list[Event]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Event).where(Event.stage == "delivery")).all()
    finally:
        engine.dispose()
    return list(rows)


def test_message_arrives_intact_with_received_header(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    sink.up()
    relay = start(start_relay, sqlite_url, sink.hop)
    body = ("Line one.\r\n.leading dot survives dot-stuffing\r\n..two dots\r\n"
            "Gr\u00fc\u00dfe, 8-bit body\r\n" + "x" * 998 + "\r\n")
    original = message("intact", body).replace(b"Subject: test intact", "Subject: Gr\u00fc\u00dfe"
                                               .encode())
    queue_id = send(relay, ["alice@dest.test"], original, mail_options=("BODY=8BITMIME",))
    [got] = wait_until(lambda: sink.to("alice@dest.test"), what="delivery")  # type: ignore[misc]
    assert got.mail_from == "author@sender.test"
    assert got.rcpt_tos == ("alice@dest.test",)
    head = got.data.partition(b"\r\n\t")[0]
    assert head.startswith(b"Received: from client.test ([127.0.0.1])")
    assert got.data.endswith(original)
    received = got.data[: len(got.data) - len(original)]
    assert f"by mx1.example.net (Floodgate) with ESMTP id {queue_id}".encode() in received
    assert received.count(b"Received:") == 1
    wait_until(lambda: not queued(relay), what="spool empty")
    relay.wait_for_log(rf"status=delivered to=<alice@dest.test> hop=127.0.0.1:{sink.port}")
    events = wait_until(lambda: delivery_events(relay, sqlite_url), what="delivery event")
    [event] = events  # type: ignore[misc]
    assert (event.action, event.reason, event.code) == ("accept", "delivered", 250)
    assert (event.queue_id, event.recipient) == (queue_id, "alice@dest.test")


def test_starttls_used_when_offered(start_relay, sqlite_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=sink.test", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    tls_sink, plain_sink = Sink(tls_context=ctx).up(), Sink().up()
    try:
        relay = start(start_relay, sqlite_url, tls_sink.hop, 'tls = "required"')
        send(relay, ["alice@dest.test"], message("tls"))
        [got] = wait_until(lambda: tls_sink.messages(), what="delivery")  # type: ignore[misc]
        assert got.tls
        relay.stop()
        # required TLS and a next hop without STARTTLS: deferred, with the reason on record
        relay2 = start(start_relay, sqlite_url, plain_sink.hop, 'tls = "required"',
                       name="plain")
        queue_id = send(relay2, ["bob@dest.test"], message("plain"))
        relay2.wait_for_log(rf"queue_id={queue_id} status=deferred .*"
                            r"TLS is required, but was not offered")
        assert plain_sink.messages() == []
    finally:
        tls_sink.down()
        plain_sink.down()


def test_next_hop_down_then_back_delivers_each_once(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    relay = start(start_relay, sqlite_url, sink.hop)
    ids = [send(relay, [f"user{i % 3}@dest.test"], message(f"down{i}")) for i in range(30)]
    # every message is tried, fails, and waits; attempts back off (0.2s, 0.4s, 0.8s, 1s ...)
    relay.wait_for_log(r"status=deferred .*connect to 127.0.0.1")
    state = queue_dir(relay).parent / "state"
    wait_until(lambda: len(list(state.glob("*.json"))) == 30, what="state of every message")
    log = relay.log()
    assert "status=delivered" not in log
    assert sorted(queued(relay)) == sorted(ids)
    sink.up()
    wait_until(lambda: len(sink.messages()) >= 30, timeout=30, what="all delivered")
    wait_until(lambda: not queued(relay), what="spool empty")
    counts = Counter(m.message_id for m in sink.messages())
    assert len(counts) == 30 and set(counts.values()) == {1}, counts


def test_4xx_for_one_recipient_retries_only_that_one(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    sink.up()
    sink.set_reply("later@dest.test", "451 4.3.0 Mailbox busy, try later")
    relay = start(start_relay, sqlite_url, sink.hop)
    queue_id = send(relay, ["now@dest.test", "later@dest.test"], message("mixed"))
    wait_until(lambda: sink.attempts("later@dest.test") >= 3, what="retries of later@")
    assert len(sink.to("now@dest.test")) == 1
    assert sink.attempts("now@dest.test") == 1
    assert queued(relay) == [queue_id]
    sink.set_reply("later@dest.test", None)
    wait_until(lambda: sink.to("later@dest.test"), what="later@ delivered")
    wait_until(lambda: not queued(relay), what="spool empty")
    assert sink.attempts("now@dest.test") == 1
    assert [m.rcpt_tos for m in sink.messages()] == [("now@dest.test",), ("later@dest.test",)]
    relay.wait_for_log(r"status=deferred to=<later@dest.test> .*reply=\"451 4.3.0 Mailbox busy")


def _dsn_parts(data: bytes) -> tuple[email.message.Message, list[email.message.Message]]:
    msg = email.message_from_bytes(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    assert isinstance(parts, list)
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = parts[1].get_payload()
    assert isinstance(status, list)
    return msg, status


def test_5xx_sends_a_dsn_to_the_sender(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    sink.up()
    sink.set_reply("gone@dest.test", "550 5.1.1 <gone@dest.test>: no such user")
    relay = start(start_relay, sqlite_url, sink.hop)
    queue_id = send(relay, ["ok@dest.test", "gone@dest.test"], message("bounce"))
    [dsn] = wait_until(lambda: sink.to("author@sender.test"), what="DSN")  # type: ignore[misc]
    assert dsn.mail_from == "<>"  # aiosmtpd reports the null sender this way
    msg, status = _dsn_parts(dsn.data)
    assert msg["To"] == "<author@sender.test>"
    assert msg["Auto-Submitted"] == "auto-replied"
    per_message, per_rcpt = status
    assert per_message["Reporting-MTA"] == "dns; mx1.example.net"
    assert per_message["X-Floodgate-Queue-ID"] == queue_id
    assert per_rcpt["Final-Recipient"] == "rfc822; gone@dest.test"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert "550 5.1.1" in per_rcpt["Diagnostic-Code"]
    headers = msg.get_payload()[2].get_payload()  # type: ignore[index, union-attr]
    assert "Message-ID: <bounce@test.floodgate>" in headers
    assert len(sink.to("ok@dest.test")) == 1
    assert sink.attempts("gone@dest.test") == 1  # 5xx is final: not retried
    wait_until(lambda: not queued(relay), what="spool empty")
    reasons = wait_until(lambda: {(e.recipient, e.reason) for e in
                                  delivery_events(relay, sqlite_url)} >= {
        ("ok@dest.test", "delivered"), ("gone@dest.test", "bounced"),
        ("author@sender.test", "delivered")}, what="events")
    assert reasons


def test_no_dsn_for_null_sender_and_expiry_bounces(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    sink.up()
    sink.set_reply("gone@dest.test", "550 5.1.1 no such user")
    sink.set_reply("busy@dest.test", "452 4.2.2 Mailbox full")
    relay = start(start_relay, sqlite_url, sink.hop, 'max_lifetime = "4s"')
    bounce_id = send(relay, ["gone@dest.test"], message("from-null"), sender="")
    relay.wait_for_log(rf"no DSN for the null sender queue_id={bounce_id}")
    busy_id = send(relay, ["busy@dest.test"], message("expire"))
    [dsn] = wait_until(lambda: sink.to("author@sender.test"), timeout=30,  # type: ignore[misc]
                       what="expiry DSN")
    _, (per_message, per_rcpt) = _dsn_parts(dsn.data)
    assert per_message["X-Floodgate-Queue-ID"] == busy_id
    assert per_rcpt["Status"] == "4.4.7"
    assert "452 4.2.2 Mailbox full" in per_rcpt["Diagnostic-Code"]
    assert sink.attempts("busy@dest.test") >= 2
    wait_until(lambda: not queued(relay), what="spool empty")
    assert [m.rcpt_tos for m in sink.messages()] == [("author@sender.test",)]


def test_null_sender_is_delivered_with_an_empty_reverse_path(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    """Bounces and delivery reports reach the next hop as `MAIL FROM:<>`, including those a
    relay of an earlier version spooled with the sender as the text "<>"; and a recipient
    of one that fails gets no DSN (RFC 5321 4.5.5)."""
    sink.up()
    sink.set_reply("gone@dest.test", "550 5.1.1 no such user")
    relay = start(start_relay, sqlite_url, sink.hop)
    fresh = send(relay, ["bounce@dest.test", "gone@dest.test"], message("null-fresh"),
                 sender="")
    envelope = {"queue_id": "0LEGACY0NULL", "mail_from": "<>", "rcpt_tos": ["old@dest.test"],
                "client": "192.0.2.1", "helo": "old.test", "node": "relay",
                "received": time.time(), "size": 0, "mail_options": []}
    staged = queue_dir(relay).parent / "legacy.msg"
    staged.write_bytes(MAGIC + json.dumps(envelope).encode() + b"\n" + message("null-legacy"))
    staged.rename(queue_dir(relay) / "0LEGACY0NULL.msg")
    wait_until(lambda: sink.to("bounce@dest.test") and sink.to("old@dest.test"), timeout=20,
               what="both null-sender messages delivered")
    for got in sink.messages():
        assert got.mail_arg.split()[0] == "FROM:<>", got.mail_arg
    relay.wait_for_log(rf"no DSN for the null sender queue_id={fresh}")
    wait_until(lambda: not queued(relay), what="spool empty")
    assert sorted(m.rcpt_tos for m in sink.messages()) == [("bounce@dest.test",),
                                                           ("old@dest.test",)]
    assert "internal error" not in relay.log()


def _null_mail(relay: RelayProcess, source: str = "127.0.0.1",
               sender: str = "") -> tuple[int, bytes]:
    """MAIL from `source` with `sender` (the null sender unless told): its reply."""
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10,
                      source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        return smtp.mail(sender)


def test_null_sender_share_per_client(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    """A client with its share of null-sender mail queued gets 452 4.3.1 at MAIL FROM:<>;
    other clients, and its own mail with a sender, are not held back; the count falls as
    its messages expire or are delivered."""
    limits = "\n[limits]\nexempt = []\nnull_sender_share = 0.03\n"
    relay = start_relay(sqlite_url, extra=domains(sink.hop) + limits,
                        extra_delivery=delivery_settings(
                            'max_spool_messages = 100\nmax_lifetime = "15s"'))
    for i in range(3):  # the next hop is down: they stay queued until max_lifetime
        send(relay, ["bounce@dest.test"], message(f"share{i}"), sender="")
    code, reply = _null_mail(relay)
    assert (code, reply[:5]) == (452, b"4.3.1"), reply
    assert b"Insufficient system storage" in reply
    relay.wait_for_log(r"stage=mail action=tempfail reason=null_sender_share code=452")
    assert _null_mail(relay, source="127.0.0.2")[0] == 250
    assert _null_mail(relay, sender="author@sender.test")[0] == 250
    # expiry: no DSN for the null sender, the spool empties, the client's share is free
    wait_until(lambda: not queued(relay), timeout=40, what="null-sender mail expired")
    assert _null_mail(relay)[0] == 250
    # delivery frees the share as well
    sink.up()
    for i in range(3):
        send(relay, ["bounce@dest.test"], message(f"delivered{i}"), sender="")
    wait_until(lambda: len(sink.to("bounce@dest.test")) == 3 and not queued(relay),
               what="null-sender mail delivered")
    assert _null_mail(relay)[0] == 250


def test_back_pressure_452_and_recovery(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    relay = start(start_relay, sqlite_url, sink.hop, "max_spool_messages = 3")
    for i in range(2):
        send(relay, ["a@dest.test"], message(f"bp{i}"))
    # a transaction that passed MAIL before the spool filled up is refused at RCPT
    late = smtplib.SMTP("127.0.0.1", relay.port, timeout=10)
    late.ehlo("client.test")
    assert late.mail("author@sender.test")[0] == 250
    send(relay, ["a@dest.test"], message("bp2"))
    code, reply = late.rcpt("a@dest.test")
    assert (code, reply[:5]) == (452, b"4.3.1")
    late.quit()
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        code, reply = smtp.mail("author@sender.test")
        assert (code, reply[:5]) == (452, b"4.3.1"), reply
    relay.wait_for_log(r"stage=mail action=tempfail reason=queue_full code=452")
    sink.up()
    wait_until(lambda: len(sink.messages()) == 3, timeout=20, what="queue drains")

    def accepted() -> bool:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as smtp:
            smtp.ehlo("client.test")
            return smtp.mail("author@sender.test")[0] == 250

    wait_until(accepted, what="MAIL accepted again")
    send(relay, ["a@dest.test"], message("bp3"))
    wait_until(lambda: len(sink.messages()) == 4, what="new mail delivered")


def _ready_count(relay: RelayProcess) -> int:
    return relay.log().count(" ready ")


def test_sigkill_at_random_moments_loses_nothing(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    """1000 messages, the relay SIGKILLed at random moments and restarted: every message
    that got its 250 is delivered (duplicates are allowed, losses are not)."""
    started = time.monotonic()
    total, senders = 1000, 8
    sink.up()
    relay = start(start_relay, sqlite_url, sink.hop, "per_destination = 4")
    rng = random.Random(7)
    confirmed: set[str] = set()
    lock = threading.Lock()
    todo = list(range(total))
    done = threading.Event()
    up = threading.Event()
    up.set()

    def sender() -> None:
        while True:
            with lock:
                if not todo:
                    return
                n = todo.pop()
            while True:
                up.wait()
                try:
                    send(relay, [f"user{n % 7}@dest.test"], message(f"crash{n}"))
                    with lock:
                        confirmed.add(f"<crash{n}@test.floodgate>")
                    break
                except (OSError, smtplib.SMTPException, AssertionError):
                    continue  # relay killed mid-transaction: not confirmed, send again

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
    for t in threads:
        t.start()
    kills = 0
    while any(t.is_alive() for t in threads):
        target = len(confirmed) + rng.randint(40, 160)
        wait_until(lambda target=target: len(confirmed) >= target  # type: ignore[misc]
                   or not any(t.is_alive() for t in threads), timeout=60, what="progress")
        if not any(t.is_alive() for t in threads):
            break
        up.clear()
        ready = _ready_count(relay)
        relay.signal(signal.SIGKILL)
        relay.proc.wait()  # type: ignore[union-attr]
        kills += 1
        relay.start(wait=False)
        wait_until(lambda ready=ready: _ready_count(relay) > ready, timeout=30,  # type: ignore[misc]
                   what="restart")
        assert port_open("127.0.0.1", relay.port)
        up.set()
    done.set()
    for t in threads:
        t.join()
    assert len(confirmed) == total and kills >= 5
    wait_until(lambda: confirmed <= {m.message_id for m in sink.messages()}, timeout=60,
               what="every confirmed message delivered")
    wait_until(lambda: not queued(relay), timeout=30, what="spool empty")
    delivered = Counter(m.message_id for m in sink.messages())
    duplicates = sum(c - 1 for c in delivered.values())
    print(f"crash test: {total} confirmed, {kills} kills, {len(delivered)} distinct delivered, "
          f"{duplicates} duplicates, {time.monotonic() - started:.1f}s")


def test_one_connection_carries_many_messages(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    relay = start(start_relay, sqlite_url, sink.hop,
                  'per_destination = 1\nmin_backoff = "1h"\nmax_backoff = "1h"')
    for i in range(10):
        send(relay, [f"r{i}@dest.test"], message(f"reuse{i}"))
    state = queue_dir(relay).parent / "state"
    wait_until(lambda: len(list(state.glob("*.json"))) == 10, what="first attempts")
    sink.up()
    floodgate(relay.config, "queue", "flush")
    wait_until(lambda: len(sink.messages()) == 10, what="all delivered")
    assert len(sink.sessions) == 1


def test_config_names_the_bad_delivery_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = write_config(tmp_path / "bad.toml", store_url="sqlite:///x.db", port=2525,
                        extra_delivery='tls = "always"\nmin_free_disk = "lots"\n'
                                       'max_backoff = "1s"\nmin_backoff = "1m"')
    proc = floodgate(path, "check-config", check=False)
    assert proc.returncode == 2
    assert "delivery.tls: Input should be 'opportunistic', 'required' or 'none'" in proc.stderr
    assert "delivery.min_free_disk: expected a size" in proc.stderr
    good = write_config(tmp_path / "good.toml", store_url="sqlite:///x.db", port=2525,
                        extra_delivery='min_free_disk = "2GB"\nmax_lifetime = "3d"\n'
                                       'dsn_relay = "[::1]:25"')
    assert floodgate(good, "check-config").stdout.strip() == "ok"


def test_backoff_doubles_between_bounds() -> None:
    assert [backoff(n, 300, 4000) for n in range(1, 7)] == [300, 600, 1200, 2400, 4000, 4000]
    assert parse_size("100MB") == 100 * 1024**2 and parse_size(512) == 512
    assert status_of("550 5.1.1 User unknown") == "5.1.1"
    assert status_of("554 no such thing") == "5.0.0"


def _scan_service(tmp_path: Path) -> tuple[DeliveryService, Spool]:
    """A delivery service on a real spool, not started: the test drives its scheduler's
    scan."""
    url = f"sqlite:///{tmp_path}/floodgate.db"
    config = load_config(str(write_config(tmp_path / "relay.toml", store_url=url, port=2525)))
    spool = Spool(config.relay.spool_dir)
    spool.prepare()
    return DeliveryService(config, spool, EventWriter(make_engine(url))), spool


def _spool_message(spool: Spool, n: str) -> str:
    envelope = Envelope(queue_id=new_queue_id(), mail_from="author@sender.test",
                        rcpt_tos=["a@dest.test"], client="192.0.2.7", helo="client.test",
                        node="relay", received=time.time())
    spool.write(envelope, message(n))
    return envelope.queue_id


def test_scan_claims_operator_removal_only_for_known_messages(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """The race behind a `removed from the queue by the operator` line for mail just
    accepted: the scan lists the directory, a message is spooled (its listener tells the
    service) before the listing is compared with what the service knows. Driven
    deterministically: the arrival is made inside the listing call, after the listing."""
    caplog.set_level(logging.INFO, logger="floodgate.delivery")
    service, spool = _scan_service(tmp_path)
    claims = "removed from the queue by the operator"

    async def scenario() -> None:
        service.scheduler.loop = asyncio.get_running_loop()
        old = _spool_message(spool, "old")
        await service.scheduler.scan()
        assert set(service.scheduler.entries) == {old}
        spool.listeners.append(service.scheduler.spooled)
        listed = spool.ids
        arrived: list[str] = []

        def listing_then_arrival() -> list[str]:
            ids = listed()
            arrived.append(_spool_message(spool, "new"))  # its listener runs meanwhile
            return ids

        spool.ids = listing_then_arrival  # type: ignore[method-assign]
        await service.scheduler.scan()
        spool.ids = listed  # type: ignore[method-assign]
        assert set(service.scheduler.entries) == {old, *arrived}
        assert claims not in caplog.text
        # a file whose envelope line is not complete yet is not a message: neither added
        # nor reported as unreadable, and picked up once it is whole
        partial = spool.path("0PARTIAL")
        head = MAGIC + json.dumps({"queue_id": "0PARTIAL", "mail_from": ""}).encode()
        partial.write_bytes(head[:-10])
        await service.scheduler.scan()
        assert "0PARTIAL" not in service.scheduler.entries
        assert "unreadable" not in caplog.text
        partial.unlink()
        # what the operator really removes is reported, and only that
        assert queue_admin.delete(spool, old)
        await service.scheduler.scan()
        assert set(service.scheduler.entries) == set(arrived)
        assert caplog.text.count(claims) == 1
        assert f"{claims} queue_id={old}" in caplog.text

    asyncio.run(scenario())
