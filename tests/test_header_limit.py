"""limits.header_size_limit through a running relay: a header field longer than the limit
(Postfix's header_size_limit) is refused whole with 552 5.3.4 before any scan, and the
session goes on."""

from __future__ import annotations

import smtplib

from relay.config.limits import LimitsConfig
from tests.support import unref
from tests.test_smtp import ALIASES, client, spooled

HEAD = b"From: a@sender.test\r\nTo: bob@example.org\r\n"


def folded(size: int) -> bytes:
    """A Subject field of `size` bytes (line endings of its folds counted, not its last),
    folded every 40 bytes."""
    first, fold = b"Subject: start\r\n", b" " + b"x" * 37 + b"\r\n"  # 16 and 40 bytes
    lines = (size - len(first) - 2) // len(fold)
    last = b" " + b"y" * (size - len(first) - len(fold) * lines - 1)
    field = first + fold * lines + last + b"\r\n"
    assert len(field) - 2 == size
    return field


def test_a_header_field_over_the_limit_is_refused_and_the_session_goes_on(
        start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES, extra="[limits]\nheader_size_limit = 2000\n")
    over = HEAD + folded(2001) + b"\r\nbody\r\n"
    at_limit = HEAD + folded(2000) + b"\r\nbody\r\n"
    with client(relay) as smtp:
        try:
            smtp.sendmail("s@sender.test", ["bob@example.org"], over)
            raise AssertionError("accepted a header over the limit")
        except smtplib.SMTPDataError as e:
            assert (e.smtp_code, unref(e.smtp_error)) == (552, "5.3.4 Message header too large")
        assert spooled(relay) == []
        assert smtp.sendmail("s@sender.test", ["bob@example.org"], at_limit) == {}
    assert len(spooled(relay)) == 1
    line = relay.wait_for_log(r"decision .*reason=size code=552 .*").group(0)
    assert "limit 2000" in line


def test_the_default_is_postfixs() -> None:
    assert LimitsConfig().header_size_limit == 102_400
