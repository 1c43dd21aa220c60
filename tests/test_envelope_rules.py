"""Envelope and trace rules against a running relay: the postmaster (RFC 5321 4.5.1),
control characters in addresses, and mail loops (Postfix's hopcount_limit)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relay.delivery.spool import read_file
from tests.hardening_support import Raw, events, spooled
from tests.sink import Sink
from tests.support import unref, wait_until
from tests.test_delivery import delivery_settings


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink().up()
    yield s
    s.down()


def send(raw: Raw, rcpt: str, data: bytes = b"Subject: hi\r\n\r\nHello.\r\n") -> str:
    """One transaction for `rcpt`; the reply to the final dot."""
    assert raw.cmd("MAIL FROM:<someone@sender.test>").startswith("250 ")
    reply = raw.cmd(f"RCPT TO:<{rcpt}>")
    assert reply.startswith("250 "), f"{rcpt}: {reply}"
    assert raw.cmd("DATA").startswith("354 ")
    raw.send(data + b".\r\n")
    return raw.reply()


# -- postmaster ----------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["postmaster", "POSTMASTER", "PostMaster",
                                     "postmaster@example.org", "Postmaster@example.net"])
def test_postmaster_is_accepted_and_routed(start_relay, sqlite_url, sink: Sink,  # type: ignore[no-untyped-def]
                                           address: str) -> None:
    """<postmaster> without a domain (any case), and postmaster@ a hosted domain that the
    alias table does not list, go to the configured postmaster address."""
    relay = start_relay(sqlite_url, aliases="alice@example.org\n",
                        extra_relay='postmaster = "hostmaster@pm.test"',
                        extra=f'[domains."pm.test"]\nnext_hop = "{sink.hop}"\n',
                        extra_delivery=delivery_settings())
    with Raw(relay.port) as raw:
        assert raw.cmd("EHLO c.test").startswith("250 ")
        assert send(raw, address).startswith("250 2.0.0 Ok: queued as ")
    [got] = wait_until(lambda: sink.to("hostmaster@pm.test"), what="delivery")  # type: ignore[misc]
    assert got.rcpt_tos == ("hostmaster@pm.test",)
    assert b"Hello." in got.data
    [ev] = events(sqlite_url, lambda e: e.reason == "postmaster")
    assert ev.recipient == address and "hostmaster@pm.test" in ev.detail


def test_postmaster_defaults_to_the_first_hosted_domain(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url)
    with Raw(relay.port) as raw:
        assert raw.cmd("EHLO c.test").startswith("250 ")
        assert send(raw, "postmaster").startswith("250 2.0.0 Ok: queued as ")
    [ev] = events(sqlite_url, lambda e: e.reason == "postmaster")
    assert "postmaster@example.org" in ev.detail
    [queued] = spooled(relay)
    assert read_file(queued)[0].rcpt_tos == ["postmaster@example.org"]


def test_postmaster_in_the_alias_table_keeps_its_own_address(start_relay, sqlite_url,  # type: ignore[no-untyped-def]
                                                            sink: Sink) -> None:
    relay = start_relay(sqlite_url, aliases="postmaster@pm.test\n",
                        extra_relay='postmaster = "hostmaster@pm.test"',
                        extra=f'[domains."pm.test"]\nnext_hop = "{sink.hop}"\n',
                        extra_delivery=delivery_settings())
    with Raw(relay.port) as raw:
        assert raw.cmd("EHLO c.test").startswith("250 ")
        assert send(raw, "postmaster@pm.test").startswith("250 ")
    [got] = wait_until(lambda: sink.to("postmaster@pm.test"), what="delivery")  # type: ignore[misc]
    assert got.rcpt_tos == ("postmaster@pm.test",)


def test_postmaster_of_a_foreign_domain_is_still_relaying(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url)
    with Raw(relay.port) as raw:
        assert raw.cmd("EHLO c.test").startswith("250 ")
        assert raw.cmd("MAIL FROM:<someone@sender.test>").startswith("250 ")
        assert raw.cmd("RCPT TO:<postmaster@elsewhere.test>").startswith("554 5.7.1")


# -- control characters in envelope addresses --------------------------------------------

CONTROLS = [b"\x00", b"\x01", b"\t", b"\x1b", b"\x7f"]


@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"{ord(c):#04x}")
def test_control_characters_in_addresses_are_501(start_relay, sqlite_url, char: bytes) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases="alice@example.org\n")
    with Raw(relay.port) as raw:
        assert raw.cmd("EHLO c.test").startswith("250 ")
        for sender in (b"<a" + char + b"b@sender.test>", b'<"a' + char + b'b"@sender.test>'):
            raw.send(b"MAIL FROM:" + sender + b"\r\n")
            assert raw.reply().startswith("501 5.1.7 "), sender
        assert raw.cmd("MAIL FROM:<someone@sender.test>").startswith("250 ")
        for rcpt in (b"<al" + char + b"ice@example.org>", b'<"al' + char + b'ice"@example.org>',
                     b"<alice@example.org" + char + b">"):
            raw.send(b"RCPT TO:" + rcpt + b"\r\n")
            assert raw.reply().startswith("501 5.1.3 "), rcpt
        assert raw.cmd("RCPT TO:<alice@example.org>").startswith("250 ")
        assert raw.cmd("DATA").startswith("354 ")
        raw.send(b"Subject: hi\r\n\r\nHello.\r\n.\r\n")
        assert raw.reply().startswith("250 ")
    assert len(spooled(relay)) == 1
    refused = events(sqlite_url, lambda e: e.code == 501, at_least=5)
    assert {e.stage for e in refused} == {"mail", "rcpt"}


# -- mail loops --------------------------------------------------------------------------

def trace(n: int, folded: bool = False) -> bytes:
    fold = b"\r\n\tby mx.loop.test" if folded else b""
    return b"".join(b"Received: from hop%d.test ([192.0.2.%d])%s; Mon, 1 Jan 2024 00:00:00 "
                    b"+0000\r\n" % (i, i % 250, fold) for i in range(n))


def test_more_than_50_received_lines_is_a_loop(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases="alice@example.org\n")
    body_hops = b"Subject: quoted\r\n\r\n" + trace(80)  # in the body: not hops
    with Raw(relay.port) as raw:
        assert raw.cmd("EHLO c.test").startswith("250 ")
        assert unref(send(raw, "alice@example.org", trace(51) + b"Subject: x\r\n\r\nloop\r\n")) \
            == "554 5.4.6 Too many hops"
        assert send(raw, "alice@example.org", trace(50, folded=True) + body_hops) \
            .startswith("250 ")
        assert unref(send(raw, "alice@example.org",
                          trace(30) + b"RECEIVED : x\r\n" * 21 + b"\r\nbody\r\n")) \
            == "554 5.4.6 Too many hops"
    assert len(spooled(relay)) == 1
    loops = events(sqlite_url, lambda e: e.reason == "too_many_hops", at_least=2)
    assert all(e.code == 554 and e.stage == "data" for e in loops)


def test_hopcount_limit_is_configurable(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases="alice@example.org\n",
                        extra_relay="hopcount_limit = 3")
    with Raw(relay.port) as raw:
        assert raw.cmd("EHLO c.test").startswith("250 ")
        assert send(raw, "alice@example.org", trace(3) + b"\r\nok\r\n").startswith("250 ")
        assert unref(send(raw, "alice@example.org", trace(4) + b"\r\nloop\r\n")) \
            == "554 5.4.6 Too many hops"
