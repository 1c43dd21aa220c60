"""One SMTP session against the rest: pipelined commands take turns with other clients,
and Postfix's session error limits stop directory harvesting and junk-command floods."""

from __future__ import annotations

import asyncio
import select
from pathlib import Path
from typing import Any

import pytest

from filters.recipients import RecipientFilter
from relay.config.limits import LimitsConfig
from relay.delivery.spool import Spool
from relay.events.writer import EventWriter
from relay.smtp.handler import FloodgateSMTP, RelayHandler
from relay.smtp.pipeline import Pipeline
from relay.store.database import make_engine
from tests.hardening_support import Raw, events
from tests.support import unref

# -- pipelining: the command loop yields between commands -------------------------------


class Turns:
    """Counts turns of the event loop: a task that runs once per turn."""

    def __init__(self) -> None:
        self.count = 0

    async def run(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(0)


async def pipelined_reply_turns(tmp_path: Path, commands: list[bytes]) -> list[int]:
    """Serve one in-process relay session on a real socket; the client sends `commands`
    in one write. Returns the loop's turn count as each reply was pushed."""
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    handler = RelayHandler(
        node="t", hostname="mx.test", spool=spool, max_recipients=100,
        pipeline=Pipeline([RecipientFilter(hosted=lambda d: d == "example.org",
                                           known=lambda local, d: local == "alice")]),
        events=EventWriter(make_engine(f"sqlite:///{tmp_path}/events.db")),
        limits=LimitsConfig(smtpd_error_sleep_time=0, smtpd_hard_error_limit=1000,
                            smtpd_junk_command_limit=1000))
    turns = Turns()
    seen: list[int] = []

    class Counted(FloodgateSMTP):
        async def push(self, status: Any) -> None:
            seen.append(turns.count)
            await super().push(status)

    server = await asyncio.get_running_loop().create_server(
        lambda: Counted(handler, hostname="mx.test"), "127.0.0.1", 0)
    ticker = asyncio.create_task(turns.run())
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()  # the greeting
        writer.write(b"".join(commands))
        for _ in commands:
            while (await reader.readline())[3:4] == b"-":
                pass
        writer.close()
        return seen[1:]  # the greeting's push first
    finally:
        ticker.cancel()
        server.close()


@pytest.mark.parametrize("commands", [
    [b"NOOP\r\n"] * 50,
    [b"HELO c.test\r\n", b"MAIL FROM:<s@sender.test>\r\n",
     *(f"RCPT TO:<nobody{i}@example.org>\r\n".encode() for i in range(40))],
], ids=["noop", "unknown-rcpt"])
def test_pipelined_commands_each_wait_a_turn_of_the_loop(tmp_path: Path,
                                                         commands: list[bytes]) -> None:
    """A pipelined batch is in the reader's buffer at once; without a yield between
    commands aiosmtpd ran all of it in one turn (other clients stalled 1.4-17 s)."""
    seen = asyncio.run(pipelined_reply_turns(tmp_path, commands))
    assert len(seen) == len(commands)
    same_turn = [i for i in range(1, len(seen)) if seen[i] == seen[i - 1]]
    assert same_turn == [], f"replies {same_turn} came in the same turn as the one before"


# -- error limits (Postfix smtpd_*_limit) -----------------------------------------------

WORDS = [f"word{i:04d}" for i in range(1889)]
VALID = WORDS[::9][:200]  # 200 real addresses spread through the dictionary


def replies_until_closed(raw: Raw) -> list[str]:
    """Every reply line the server sends before it closes the connection."""
    out: list[str] = []
    while True:
        try:
            out.append(raw.reply())
        except (ConnectionError, TimeoutError):
            return out


def test_directory_harvest_is_cut_off_at_the_hard_error_limit(start_relay,  # type: ignore[no-untyped-def]
                                                              sqlite_url) -> None:
    relay = start_relay(sqlite_url, aliases="".join(f"{w}@example.org\n" for w in VALID),
                        extra='[limits]\nsmtpd_error_sleep_time = "0.01s"\n')
    with Raw(relay.port) as raw:
        assert raw.cmd("EHLO harvester.test").startswith("250 ")
        assert raw.cmd("MAIL FROM:<s@sender.test>").startswith("250 ")
        raw.send(b"".join(f"RCPT TO:<{w}@example.org>\r\n".encode() for w in WORDS))
        answers = replies_until_closed(raw)
    assert unref(answers[-1]) == "421 4.7.0 mx1.example.net Error: too many errors"
    rcpt = answers[:-1]
    unknown = [a for a in rcpt if a.startswith("550 5.1.1")]
    assert len(unknown) == 20  # smtpd_hard_error_limit
    assert all(a.startswith(("550 5.1.1", "250 ", "452 4.5.3")) for a in rcpt), rcpt
    assert len(rcpt) < 30, f"{len(rcpt)} of {len(WORDS)} answered"
    [cut] = events(sqlite_url, lambda e: e.reason == "error_limit")
    assert cut.code == 421 and cut.stage == "command"


def test_error_delay_holds_only_that_session(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """Past the soft limit each reply waits smtpd_error_sleep_time: in the session, not in
    the event loop, so another client is served meanwhile."""
    relay = start_relay(sqlite_url, extra='[limits]\nsmtpd_soft_error_limit = 2\n'
                        'smtpd_error_sleep_time = "1h"\n')
    with Raw(relay.port) as slow, Raw(relay.port) as other:
        assert slow.cmd("EHLO prober.test").startswith("250 ")
        assert slow.cmd("MAIL FROM:<s@sender.test>").startswith("250 ")
        slow.send(b"RCPT TO:<x1@example.org>\r\nRCPT TO:<x2@example.org>\r\n"
                  b"RCPT TO:<x3@example.org>\r\n")
        assert slow.reply().startswith("550 5.1.1")
        assert slow.reply().startswith("550 5.1.1")
        # the third reply waits; meanwhile the other client is served in full
        assert other.cmd("EHLO other.test").startswith("250 ")
        for _ in range(5):
            assert other.cmd("NOOP").startswith("250 ")
        assert other.cmd("MAIL FROM:<s@sender.test>").startswith("250 ")
        assert other.cmd("RCPT TO:<alice@example.org>").startswith("550 ")
        assert select.select([slow.sock], [], [], 0)[0] == [], "the delayed reply came"


def test_junk_commands_count_as_errors_past_the_junk_limit(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """Postfix: `if (junk_cmds++ > smtpd_junk_command_limit) error_count++`: with a junk
    limit of 5 and a hard limit of 3, the 6 first are free and the 9th ends the session."""
    relay = start_relay(sqlite_url, extra='[limits]\nsmtpd_junk_command_limit = 5\n'
                        'smtpd_hard_error_limit = 3\nsmtpd_error_sleep_time = 0\n')
    with Raw(relay.port) as raw:
        raw.send(b"NOOP\r\nRSET\r\nHELP\r\nVRFY <a@example.org>\r\n" + b"NOOP\r\n" * 20)
        answers = replies_until_closed(raw)
    assert unref(answers[-1]) == "421 4.7.0 mx1.example.net Error: too many errors"
    assert len(answers) == 10, answers
    assert all(a[:1] == "2" for a in answers[:-1]), answers
    [cut] = events(sqlite_url, lambda e: e.reason == "junk_limit")
    assert cut.code == 421


def test_accepted_mail_starts_the_counts_over(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases="alice@example.org\n",
                        extra='[limits]\nsmtpd_hard_error_limit = 3\n'
                        'smtpd_error_sleep_time = 0\n')
    with Raw(relay.port) as raw:
        assert raw.cmd("EHLO c.test").startswith("250 ")
        for _ in range(3):
            assert raw.cmd("MAIL FROM:<s@sender.test>").startswith("250 ")
            assert raw.cmd("RCPT TO:<x@example.org>").startswith("550 ")
            assert raw.cmd("RCPT TO:<y@example.org>").startswith("550 ")
            assert raw.cmd("RCPT TO:<alice@example.org>").startswith("250 ")
            assert raw.cmd("DATA").startswith("354 ")
            assert raw.cmd("Subject: t\r\n\r\nhi\r\n.").startswith("250 ")
        assert raw.cmd("QUIT").startswith("221 ")
