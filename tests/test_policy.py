"""`floodgate policy` over its socket: Postfix's SMTPD policy protocol answered with the
relay's own codes and texts, many connections with many requests each, and a hostile client
kept within bounds (tests/test_postfix_adoption.py runs it under a real Postfix)."""

from __future__ import annotations

import asyncio
import smtplib
import socket
from collections.abc import Callable, Iterator

import pytest

from relay.smtp.policy import MAX_CONNECTIONS
from tests.hardening_support import Raw
from tests.support import RelayProcess, floodgate, free_port, split_ref, unref
from tests.test_limits import limits
from tests.test_smtp import ALIASES

PolicyFactory = Callable[..., tuple[RelayProcess, RelayProcess]]


@pytest.fixture
def start_policy(start_relay, sqlite_url) -> Iterator[PolicyFactory]:  # type: ignore[no-untyped-def]
    """A relay and a policy service on the same configuration and store."""
    started: list[RelayProcess] = []

    def start(**config: object) -> tuple[RelayProcess, RelayProcess]:
        relay = start_relay(sqlite_url, aliases=ALIASES, **config)
        port = free_port()
        policy = RelayProcess(relay.config, port, log_name="policy",
                              command=("policy", "--listen", f"127.0.0.1:{port}")).start()
        started.append(policy)
        return relay, policy

    yield start
    for policy in started:
        policy.stop()


@pytest.fixture
def services(start_policy: PolicyFactory) -> tuple[RelayProcess, RelayProcess]:
    return start_policy()


def request(recipient: str, client: str = "192.0.2.7", port: str = "4000",
            instance: str = "a1", **more: str) -> bytes:
    attrs = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
             "protocol_name": "ESMTP", "client_address": client, "client_port": port,
             "client_name": "unknown", "helo_name": "client.test", "sender": "s@sender.test",
             "recipient": recipient, "instance": instance, **more}
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


def ask(port: int, *requests: bytes) -> list[str]:
    """The actions for `requests`, sent one after the other on one connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        reader = s.makefile("rb")
        out = []
        for r in requests:
            s.sendall(r)
            line = reader.readline().decode()
            assert reader.readline() == b"\n"
            assert line.startswith("action=")
            out.append(line[len("action="):].rstrip("\n"))
        return out


def test_answers_are_the_relays_own(services) -> None:  # type: ignore[no-untyped-def]
    relay, policy = services
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@sender.test")
        said = [smtp.rcpt(r)[1].decode() for r in ("nobody@example.org", "x@elsewhere.test")]
    relay_replies = [f"{code} {text}" for code, text in zip((550, 554), said, strict=True)]
    actions = ask(policy.port, request("nobody@example.org"), request("x@elsewhere.test"),
                  request("bob@example.org"))
    assert [unref(a) for a in actions[:2]] == [unref(r) for r in relay_replies]
    assert actions[2] == "DUNNO"
    refs = {split_ref(a)[1] for a in actions[:2]}
    assert len(refs) == 1  # one SMTP session behind Postfix, one reference
    policy.wait_for_log(r"decision session=\w+ client=192.0.2.7 stage=rcpt action=reject "
                        r"reason=unknown_rcpt code=550 .*rcpt=nobody@example.org")
    policy.wait_for_log(r"decision session=\w+ client=192.0.2.7 stage=connect action=accept")


def test_many_connections_with_many_requests(services) -> None:  # type: ignore[no-untyped-def]
    _, policy = services

    async def one(n: int) -> list[str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", policy.port)
        out = []
        for i in range(20):
            # a few unknown recipients each, from hosts of different networks: under the
            # scoring threshold, nobody is blocked mid-test
            rcpt = f"guess{i}@example.org" if i % 5 == 0 else "bob@example.org"
            writer.write(request(rcpt, client=f"10.{n}.0.1", port=str(n), instance=str(i)))
            await writer.drain()
            out.append((await reader.readline()).decode())
            assert await reader.readline() == b"\n"
        writer.close()
        return out

    async def all_of_them() -> list[list[str]]:
        return await asyncio.gather(*(one(n) for n in range(1, 51)))

    for answers in asyncio.run(all_of_them()):
        assert [a for i, a in enumerate(answers) if i % 5] == ["action=DUNNO\n"] * 16
        assert all(a.startswith("action=550 5.1.1 ") for a in answers[::5])


@pytest.mark.parametrize(("hostile", "why"), [
    (b"request=smtpd_access_policy\nrecipient=" + b"x" * 10_000 + b"\n\n",
     "attribute line over 4096 bytes"),
    (b"".join(b"a%d=b\n" % i for i in range(5000)) + b"\n", "more than 100 attributes"),
    (b"request=smtpd_access_policy\nclient_address=192.0.2.1", "inside an attribute line"),
    (b"no equals sign\n\n", "without name=value"),
])
def test_a_hostile_client_is_cut_off_and_logged(services, hostile: bytes, why: str) -> None:  # type: ignore[no-untyped-def]
    _, policy = services
    with socket.create_connection(("127.0.0.1", policy.port), timeout=10) as s:
        s.sendall(hostile)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""  # closed without an answer
    policy.wait_for_log(rf"policy connection closed .*reason=\"?[^\n]*{why}")
    assert ask(policy.port, request("bob@example.org")) == ["DUNNO"]  # still serving


def test_connection_rate_counts_sessions_behind_postfix(start_policy: PolicyFactory) -> None:
    relay, policy = start_policy(extra=limits(connection_rate=3, rate_window="1h"))
    answers = [ask(policy.port, request("bob@example.org", port=str(port)))[0]
               for port in range(5000, 5004)]
    assert answers[:3] == ["DUNNO"] * 3
    for _ in range(3):  # the relay's own words for the same limit
        with Raw(relay.port) as raw:
            assert raw.banner.startswith("220 ")
    with Raw(relay.port) as raw:
        assert unref(answers[3]) == unref(raw.banner)
    assert unref(answers[3]).startswith("421 4.7.0 Too many connections from your host")


def test_observe_mode_records_and_answers_dunno(start_policy: PolicyFactory) -> None:
    _, policy = start_policy(extra='[policy]\nmode = "observe"\n')
    floodgate(policy.config, "block", "add", "192.0.2.66", "--for", "1h")
    policy.wait_for_log(r"blocks loaded")
    assert ask(policy.port, request("bob@example.org", client="192.0.2.66")) == ["DUNNO"]
    policy.wait_for_log(r"decision .*client=192.0.2.66 stage=connect action=observe "
                        r"reason=blocked code=554")


def test_a_connect_request_then_recipients_of_the_same_instance(services) -> None:  # type: ignore[no-untyped-def]
    """smtpd_delay_reject = no: Postfix asks at CONNECT, then at each RCPT; the MAIL checks
    still run (and the sender is recorded) whatever `instance` the CONNECT request had."""
    _, policy = services
    connect = request("", protocol_state="CONNECT", sender="", helo_name="")
    assert ask(policy.port, connect, request("nobody@example.org"))[0] == "DUNNO"
    policy.wait_for_log(r"decision .*client=192.0.2.7 stage=rcpt action=reject "
                        r"reason=unknown_rcpt code=550 helo=client.test sender=<s@sender.test>")


def test_a_request_whose_client_is_not_an_ip_records_nothing(services) -> None:  # type: ignore[no-untyped-def]
    """Postfix always sends the client's IP: a made-up `client_address` (a local client
    talking to the port itself) is answered DUNNO and logged, and no host is invented."""
    _, policy = services
    assert ask(policy.port, request("nobody@example.org", client="not-an-ip")) == ["DUNNO"]
    policy.wait_for_log(r"policy request ignored client=not-an-ip "
                        r"reason=\"client_address is not an IP address\"")
    [said] = ask(policy.port, request("nobody@example.org", client="192.0.2.8"))
    assert said.startswith("550 5.1.1 ")  # the one after it is decided as ever
    policy.wait_for_log(r"decision .*client=192.0.2.8 stage=rcpt action=reject")
    assert "client=not-an-ip stage=" not in policy.log()


def test_a_client_holding_every_connection_cannot_lock_postfix_out(services) -> None:  # type: ignore[no-untyped-def]
    """A local client opens the cap's worth of connections, half idle and half sending a
    request one byte at a time: a new connection (Postfix's) closes the one that waited
    longest and is answered."""
    _, policy = services
    held = []
    try:
        for i in range(MAX_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", policy.port), timeout=10)
            if i % 2:
                s.sendall(b"request=smtpd_acc")  # and never the rest
            held.append(s)
        assert ask(policy.port, request("bob@example.org")) == ["DUNNO"]
        policy.wait_for_log(r"policy connection closed .*reason=\"waited longest "
                            rf"of {MAX_CONNECTIONS} connections, closed for a new one\"")
        assert held[0].recv(100) == b""  # the oldest was closed without an answer
    finally:
        for s in held:
            s.close()
    assert "policy connection refused" not in policy.log()
