"""Unfinished DATA is bounded in memory: past a threshold it goes to a file in the spool's
tmp/ (issue #16: forty clients holding 20 MB each without the final dot took the relay from
310 to 1,162 MB of RSS). Against a running relay over real sockets, delivering to a sink."""

from __future__ import annotations

import contextlib
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hardening_support import Raw, transaction
from tests.sink import Sink
from tests.support import RelayProcess, free_port, wait_until, write_config

MB = 1024 * 1024
PER_MESSAGE = 1 * MB
TOTAL = 8 * MB
CLIENTS = 40
BASE = (b"x" * 76 + b"\r\n") * (20 * MB // 78)  # 20 MB of body, no line starts with a dot


def rss(relay: RelayProcess, field: str = "VmRSS") -> int:
    """Bytes, from /proc/PID/status (VmRSS now, VmHWM the peak)."""
    assert relay.proc is not None
    for line in Path(f"/proc/{relay.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def head(n: int) -> bytes:
    return (f"From: a@sender.test\r\nTo: u{n:02d}@dest.test\r\n"
            f"Subject: spill {n:02d}\r\n\r\n").encode()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink().up()
    yield s
    s.down()


@pytest.fixture
def relay(tmp_path: Path, sqlite_url: str, sink: Sink,
          request: pytest.FixtureRequest) -> Iterator[RelayProcess]:
    """`data_timeout` from an indirect parameter, else the default."""
    data_timeout = getattr(request, "param", "10m")
    port = free_port()
    path = write_config(
        tmp_path / "relay.toml", store_url=sqlite_url, port=port,
        extra_delivery='min_backoff = "0.2s"\nscan_interval = "0.2s"',
        extra=f"""
[domains."dest.test"]
next_hop = "{sink.hop}"
catch_all = true
[domains."sender.test"]
next_hop = "{sink.hop}"
catch_all = true

[limits]
data_memory_per_message = "{PER_MESSAGE}"
data_memory_total = "{TOTAL}"
data_timeout = "{data_timeout}"
""")
    path.write_text(path.read_text().replace("max_message_size = 100000",
                                             f"max_message_size = {32 * MB}"))
    tmp = tmp_path / "spool-relay" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "data-1-stale").write_bytes(b"left by a crash")
    relay = RelayProcess(path, port).start()
    yield relay
    relay.stop()


def spill_files(relay: RelayProcess) -> list[Path]:
    return sorted((relay.config.parent / "spool-relay" / "tmp").glob("data-*"))


def spilled_bytes(relay: RelayProcess) -> int:
    total = 0
    for path in spill_files(relay):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def test_forty_unfinished_20_mb_messages_stay_within_the_memory_budget(
        relay: RelayProcess, sink: Sink) -> None:
    assert spill_files(relay) == []  # a crash's leftovers are cleared at start
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as smtp:  # warm up every path
        smtp.sendmail("a@sender.test", ["warm@dest.test"], head(99) + b"warm\r\n")
    wait_until(lambda: sink.to("warm@dest.test"), 30, "the warm-up delivery")
    before, peak_before = rss(relay), rss(relay, "VmHWM")

    clients = [Raw(relay.port, timeout=120) for _ in range(CLIENTS)]
    try:
        for n, raw in enumerate(clients):
            transaction(raw, rcpt=f"u{n:02d}@dest.test", sender="a@sender.test")
            raw.send(head(n))
            raw.send(BASE)
        want = sum(len(head(n)) + len(BASE) for n in range(CLIENTS))
        wait_until(lambda: spilled_bytes(relay) == want, 300, "every message read")
        held, peak = rss(relay), rss(relay, "VmHWM")
        print(f"\nRSS before {before / MB:.0f} MB, holding {CLIENTS} x 20 MB unfinished: "
              f"{held / MB:.0f} MB (peak {peak_before / MB:.0f} -> {peak / MB:.0f} MB); "
              f"{len(spill_files(relay))} spill files, {want / MB:.0f} MB")
        # the budget plus the sessions' own buffers (64 KB reads), nowhere near 800 MB
        assert held - before < TOTAL + 64 * MB
        assert peak - max(before, peak_before) < TOTAL + 64 * MB
        assert len(spill_files(relay)) == CLIENTS

        for raw in clients[: CLIENTS // 2]:  # hang up mid-DATA: their files go
            raw.close()
        wait_until(lambda: len(spill_files(relay)) == CLIENTS // 2, 30, "files of hang-ups")
        for raw in clients[CLIENTS // 2:]:
            raw.send(b".\r\n")
        for raw in clients[CLIENTS // 2:]:
            assert raw.reply().startswith("250 2.0.0 Ok: queued as ")
        assert spill_files(relay) == []
    finally:
        for raw in clients:
            raw.close()
    for n in range(CLIENTS // 2, CLIENTS):
        [got] = wait_until(lambda n=n: sink.to(f"u{n:02d}@dest.test"), 60,  # type: ignore[misc]
                           f"delivery of message {n}")
        trace, _, message = got.data.partition(head(n))
        assert message == BASE, n  # byte-identical after the relay's own Received: line
        assert trace.startswith(b"Received: from raw.test")


@pytest.mark.parametrize("relay", ["3s"], indirect=True, ids=["data_timeout=3s"])
def test_spill_file_goes_on_timeout_and_on_refusal(relay: RelayProcess) -> None:
    with Raw(relay.port) as raw:
        transaction(raw, rcpt="late@dest.test")
        raw.send(head(1) + BASE[: 3 * MB])
        wait_until(lambda: spilled_bytes(relay) > 2 * MB, 30, "spilled")
        assert raw.reply().startswith("421 4.4.2 ")  # data_timeout
    wait_until(lambda: spill_files(relay) == [], 30, "the timed-out message's file gone")
    with Raw(relay.port) as raw:
        transaction(raw, rcpt="big@dest.test")
        raw.send(BASE + BASE)  # 40 MB: over max_message_size, refused at the end
        raw.send(b".\r\n")
        assert raw.reply().startswith("552 ")
        assert spill_files(relay) == []
