"""One failure policy per scanner (filters/failure.py): a scanner that cannot scan answers
the same whether the scanner caught its own failure (its daemon down: nothing listens on the
address) or the pipeline caught it (the check raised: tests/fault_relay.py), and `on_error =
"accept"` marks the message `X-Floodgate-Unscanned` either way."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest

from relay.delivery.spool import read_file
from tests.hardening_support import MESSAGE, Raw, spooled, start_faulty, transaction
from tests.support import RelayProcess, free_port, unref

RAISES = b"X-Fault: scanner-raises\r\n"


@pytest.fixture
def scanner_down(tmp_path: Path, sqlite_url: str, request: pytest.FixtureRequest
                 ) -> Iterator[tuple[str, RelayProcess]]:
    """The faulty relay with one scanner, whose address has nothing listening; the scanner
    and `on_error` come from the test's parameters."""
    scanner, on_error = request.param
    started: list[RelayProcess] = []
    try:
        yield scanner, start_faulty(tmp_path, sqlite_url, started, extra=f"""
[{scanner}]
address = "127.0.0.1:{free_port()}"
timeout = "3s"
on_error = "{on_error}"
""")
    finally:
        for relay in started:
            relay.stop()


def end_of_data(relay: RelayProcess, message: bytes) -> str:
    with Raw(relay.port) as raw:
        transaction(raw)
        raw.send(message + b".\r\n")
        return raw.reply()


@pytest.mark.parametrize("scanner_down", [("clamav", "tempfail"), ("spamassassin", "tempfail")],
                         indirect=True, ids=["clamav", "spamassassin"])
def test_the_tempfail_is_the_same_whoever_caught_the_failure(scanner_down) -> None:  # type: ignore[no-untyped-def]
    scanner, relay = scanner_down
    caught_by_scanner = unref(end_of_data(relay, MESSAGE))  # each session its own [ref]
    caught_by_pipeline = unref(end_of_data(relay, RAISES + MESSAGE))
    assert caught_by_pipeline[:9] == caught_by_scanner[:9]
    assert caught_by_pipeline == caught_by_scanner  # one text too
    assert caught_by_scanner.startswith("451 4.3.0 Temporary failure in ")
    relay.wait_for_log(rf"reason={scanner}_error .*detail=\"RuntimeError: injected fault")
    assert spooled(relay) == []


@pytest.mark.parametrize("scanner_down", [("clamav", "accept"), ("spamassassin", "accept")],
                         indirect=True, ids=["clamav", "spamassassin"])
def test_accept_marks_the_message_whoever_caught_the_failure(scanner_down) -> None:  # type: ignore[no-untyped-def]
    scanner, relay = scanner_down
    assert end_of_data(relay, MESSAGE).startswith("250 2.0.0 Ok: queued as")
    assert end_of_data(relay, RAISES + MESSAGE).startswith("250 2.0.0 Ok: queued as")
    marks = sorted(" ".join(str(value).split())  # unfolded
                   for path in spooled(relay)
                   for value in message_from_bytes(read_file(path)[1]).get_all(
                       "X-Floodgate-Unscanned", []))
    assert len(marks) == 2 and all(m.startswith(f"{scanner} (") for m in marks), marks
    assert f"{scanner} (RuntimeError: injected fault in the {scanner} check)" in marks
