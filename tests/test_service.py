"""The relay as a service: durability, shutdown, listeners, TLS, shared stores, outages."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
import subprocess
from pathlib import Path

from sqlalchemy import select

from relay.delivery.spool import read_file
from relay.store.database import make_engine
from relay.store.tables import Event
from tests.support import event_count, floodgate, free_port, unref, wait_until
from tests.test_smtp import ALIASES, MESSAGE, client, spooled


def read_reply(sock: socket.socket, buf: bytearray) -> str:
    """Read one complete (possibly multi-line) SMTP reply."""
    while True:
        lines = bytes(buf).split(b"\r\n")
        for i, line in enumerate(lines[:-1]):
            if len(line) >= 4 and line[3:4] == b" ":
                del buf[: sum(len(x) + 2 for x in lines[: i + 1])]
                return line.decode()
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed; got {bytes(buf)!r}")
        buf += chunk


def open_transaction(port: int, rcpt: str = "alice@example.org") -> tuple[socket.socket,
                                                                          bytearray]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    buf = bytearray()
    assert read_reply(sock, buf).startswith("220 ")
    sock.sendall(f"EHLO raw.test\r\nMAIL FROM:<s@sender.test>\r\nRCPT TO:<{rcpt}>\r\n"
                 "DATA\r\n".encode())
    assert read_reply(sock, buf).startswith("250 ")
    assert read_reply(sock, buf) == "250 2.1.0 Ok"
    assert read_reply(sock, buf) == "250 2.1.5 Ok"
    assert read_reply(sock, buf).startswith("354 ")
    return sock, buf


def test_sigkill_right_after_250_loses_nothing(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES)
    sock, buf = open_transaction(relay.port)
    body = b"Subject: durable\r\n\r\n" + b"line of the durable message\r\n" * 500
    sock.sendall(body + b".\r\n")
    reply = read_reply(sock, buf)
    relay.signal(signal.SIGKILL)  # the moment the 250 is read
    relay.proc.wait()
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    queue_id = unref(reply).rsplit(" ", 1)[1]
    [path] = spooled(relay)
    assert path.stem == queue_id
    envelope, message = read_file(path)
    assert envelope.rcpt_tos == ["alice@example.org"]
    assert envelope.mail_from == "s@sender.test"
    assert envelope.client == "127.0.0.1"
    assert message.endswith(body)
    assert envelope.size == len(message)
    assert list((path.parent.parent / "tmp").iterdir()) == []


def test_sigterm_finishes_transactions_in_flight(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES)
    busy, busy_buf = open_transaction(relay.port)
    busy.sendall(b"Subject: in flight\r\n\r\nfirst half\r\n")
    idle = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    idle_buf = bytearray()
    read_reply(idle, idle_buf)
    relay.signal(signal.SIGTERM)
    relay.wait_for_log(r"shutting down .*in_transaction=1")
    assert read_reply(idle, idle_buf).startswith("421 4.3.2")
    assert not socket_accepts(relay.port)
    busy.sendall(b"second half\r\n.\r\n")
    assert read_reply(busy, busy_buf).startswith("250 2.0.0 Ok: queued as ")
    assert read_reply(busy, busy_buf).startswith("421 4.3.2")
    assert relay.proc.wait(20) == 0
    [path] = spooled(relay)
    assert read_file(path)[1].endswith(b"first half\r\nsecond half\r\n")
    assert "stopped events_written=" in relay.log()


def socket_accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_sigusr1_prints_every_threads_stack_and_keeps_serving(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES)
    dump = relay.stacks()
    assert "Current thread" in dump or "Thread 0x" in dump
    assert "relay/service/server.py" in dump  # the event loop's own frames
    with client(relay) as smtp:
        assert smtp.noop()[0] == 250


def test_port_taken_is_a_clear_error(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    relay = start_relay(sqlite_url, port=port, wait=False)
    assert relay.proc.wait(30) == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in relay.log()
    assert "Traceback" not in relay.log()
    holder.close()


def test_listens_on_ipv4_and_ipv6(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    relay = start_relay(sqlite_url, aliases=ALIASES, port=port,
                        listen=[f"127.0.0.1:{port}", f"[::1]:{port}"])
    with smtplib.SMTP("::1", port, timeout=10) as smtp:
        assert smtp.sendmail("s@sender.test", ["alice@example.org"], MESSAGE) == {}
    with client(relay) as smtp:
        assert smtp.sendmail("s@sender.test", ["bob@example.org"], MESSAGE) == {}
    clients = sorted(read_file(p)[0].client for p in spooled(relay))
    assert clients == ["127.0.0.1", "::1"]


def test_starttls_when_configured(start_relay, sqlite_url, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx1.example.net", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra_relay='tls = { cert = "cert.pem", key = "key.pem" }')
    with client(relay) as smtp:
        assert smtp.has_extn("starttls")
        smtp.starttls(context=ssl._create_unverified_context())
        smtp.ehlo("tls.test")
        assert not smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")
        assert smtp.sendmail("s@sender.test", ["alice@example.org"], MESSAGE) == {}
    _, message = read_file(spooled(relay)[0])
    assert b"with ESMTPS id" in message


def test_alias_changes_are_seen_without_restart(start_relay, store_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(store_url, aliases=ALIASES)

    def rcpt_code(address: str) -> int:
        with client(relay) as smtp:
            smtp.mail("s@sender.test")
            return smtp.rcpt(address)[0]

    assert rcpt_code("dave@example.org") == 550
    floodgate(relay.config, "aliases", "add", "dave@example.org")
    wait_until(lambda: rcpt_code("dave@example.org") == 250, 10, "new alias")
    floodgate(relay.config, "aliases", "remove", "dave@example.org")
    wait_until(lambda: rcpt_code("dave@example.org") == 550, 10, "alias removed")


def test_two_relays_share_one_postgresql(start_relay, postgres) -> None:  # type: ignore[no-untyped-def]
    url = postgres.create_database()
    one = start_relay(url, name="one", aliases=ALIASES)
    two = start_relay(url, name="two")
    floodgate(one.config, "aliases", "add", "erin@example.net")

    def accepts(relay) -> bool:  # type: ignore[no-untyped-def]
        with client(relay) as smtp:
            smtp.mail("s@sender.test")
            return smtp.rcpt("erin@example.net")[0] == 250

    # each relay reloads the aliases on its own refresh interval: neither waits for the other
    wait_until(lambda: accepts(two), 10, "relay two sees the alias")
    wait_until(lambda: accepts(one), 10, "relay one sees the alias")
    engine = make_engine(url)

    def nodes() -> set[str]:
        with engine.connect() as conn:
            return set(conn.execute(select(Event.node).distinct()).scalars())

    wait_until(lambda: nodes() == {"one", "two"}, what="events from both relays")
    engine.dispose()


def test_event_writer_process_killed_loses_no_events(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """The store writes happen in a child process; if it dies, the relay keeps the batch,
    says so, starts another and writes everything."""
    relay = start_relay(sqlite_url, aliases=ALIASES)
    engine = make_engine(sqlite_url)

    with client(relay) as smtp:
        assert smtp.sendmail("s@sender.test", ["alice@example.org"], MESSAGE) == {}
    wait_until(lambda: event_count(engine) == 3, what="connect, rcpt and data events")
    first = int(relay.wait_for_log(r"event writer started pid=(\d+)").group(1))
    os.kill(first, signal.SIGKILL)
    with client(relay) as smtp:
        assert smtp.sendmail("s@sender.test", ["bob@example.org"], MESSAGE) == {}
    # noticed between batches, or while writing one (then the batch waits for the next)
    relay.wait_for_log(r"event writer process killed by signal 9")
    relay.wait_for_log(rf"event writer started pid=(?!{first}\b)\d+")
    wait_until(lambda: event_count(engine) == 6, what="the events of the second session")
    engine.dispose()


def test_store_outage_keeps_mail_flowing(start_relay, own_postgres) -> None:  # type: ignore[no-untyped-def]
    url = own_postgres.create_database()
    relay = start_relay(url, aliases=ALIASES)
    engine = make_engine(url)

    with client(relay) as smtp:
        assert smtp.sendmail("s@sender.test", ["alice@example.org"], MESSAGE) == {}
    wait_until(lambda: event_count(engine) >= 3, what="events before the outage")
    engine.dispose()
    own_postgres.pause()
    for _ in range(3):
        with client(relay) as smtp:
            assert smtp.sendmail("s@sender.test", ["bob@example.org"], MESSAGE) == {}
            smtp.mail("s@sender.test")
            assert smtp.rcpt("ghost@example.org")[0] == 550  # answered from the snapshot
    relay.wait_for_log(r"store unreachable, events wait in memory")
    assert len(spooled(relay)) == 4
    own_postgres.resume()
    relay.wait_for_log(r"store reachable again")
    # 3 before, then 3 sessions x (connect, rcpt ok, data, rcpt refused) = 15
    wait_until(lambda: event_count(engine) == 15, what="events written after the outage")
    engine.dispose()


def test_event_buffer_overflow_is_folded_not_dropped(start_relay, own_postgres) -> None:  # type: ignore[no-untyped-def]
    url = own_postgres.create_database()
    relay = start_relay(url, aliases=ALIASES, extra_store="event_buffer = 6")
    own_postgres.pause()
    for _ in range(4):
        with client(relay) as smtp:
            assert smtp.sendmail("s@sender.test", ["bob@example.org"], MESSAGE) == {}
    relay.wait_for_log(r"event buffer over half full, folding events per host and reason "
                       r"capacity=6")
    assert len(spooled(relay)) == 4  # mail is never refused for want of the event store
    relay.wait_for_log(r"store unreachable, events wait in memory")
    own_postgres.resume()
    relay.wait_for_log(r"store reachable again")
    engine = make_engine(url)

    # 4 sessions x (connect, rcpt, data), in at most 6 rows at any time
    wait_until(lambda: event_count(engine) == 12, what="the twelve events")
    relay.stop()
    assert event_count(engine) == 12
    assert "event buffer full" not in relay.log()
    engine.dispose()
