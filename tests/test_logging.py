"""Log lines fit for journald and syslog (relay/logs): under systemd each line starts with
its sd-daemon priority (`<4>` warning, `<6>` info) so `journalctl -p warning` works;
elsewhere each line starts with its time in UTC with the offset. The children (the event
writer, the MIME split) log the same way as the relay that started them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

from tests.hardening_support import MESSAGE, Raw, transaction
from tests.support import ROOT, RelayProcess, free_port, write_config

LEVELS = "DEBUG|INFO|WARNING|ERROR|CRITICAL"


def env_without_journal(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOURNAL_STREAM", "FLOODGATE_LOG_FORMAT")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def journal_stream(log: Path) -> str:
    """$JOURNAL_STREAM as systemd sets it when stderr is `log`: its device and inode."""
    log.touch()
    st = log.stat()
    return f"{st.st_dev}:{st.st_ino}"


def test_under_journald_every_line_carries_its_priority(tmp_path: Path, sqlite_url: str
                                                         ) -> None:
    port = free_port()
    config = write_config(tmp_path / "relay.toml", store_url=sqlite_url, port=port, extra=f"""
[spamassassin]
address = "127.0.0.1:{free_port()}"
timeout = "3s"
on_error = "tempfail"
""")
    stream = journal_stream(config.with_suffix(".log"))
    relay = RelayProcess(config, port, env=env_without_journal(JOURNAL_STREAM=stream))
    try:
        relay.start()
        assert re.search(r"^<6>INFO \S+ .*\bready\b", relay.log(), re.M), relay.log()
        with Raw(port) as raw:  # spamd is not there: the check fails, a warning
            transaction(raw, rcpt="x@catchall.test")
            raw.send(MESSAGE + b".\r\n")
            assert raw.reply().startswith("451 4.3.0 ")
        relay.wait_for_log(r"(?m)^<4>WARNING \S+ .*spamd")
    finally:
        relay.stop()
    lines = relay.log().splitlines()
    # every line (a stack dump from SIGUSR1 aside, none here) carries a priority, no time:
    # the journal stamps each entry itself
    assert lines and all(re.match(rf"<[0-7]>({LEVELS}) ", line) for line in lines), lines
    assert not any(re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", line[:40]) for line in lines)


def test_elsewhere_every_line_starts_with_its_time_in_utc(tmp_path: Path, sqlite_url: str
                                                           ) -> None:
    port = free_port()
    config = write_config(tmp_path / "relay.toml", store_url=sqlite_url, port=port)
    # a local zone five hours off UTC: a local time would fall outside [before, after]
    relay = RelayProcess(config, port, env=env_without_journal(TZ="EST5"))
    now = datetime.now(UTC)
    before = now.replace(microsecond=now.microsecond // 1000 * 1000)  # lines show ms
    try:
        relay.start()
    finally:
        relay.stop()
    after = datetime.now(UTC)
    assert " ready " in relay.log()
    for line in relay.log().splitlines():
        m = re.match(rf"(\S+) ({LEVELS}) ", line)
        assert m, line
        stamp = datetime.fromisoformat(m[1])
        assert m[1].endswith("+00:00") and re.search(r"\.\d{3}\+", m[1]), line
        assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0, line
        assert before <= stamp <= after, (line, before, after)


CHILDREN = textwrap.dedent("""
    import asyncio, sys
    from relay import logs
    from filters.childproc import module_argv, spawn, write_frame

    logs.setup("INFO", sys.argv[1])

    async def crash(module):
        # what each child cannot read makes it fail: its traceback goes to our stderr
        child = await spawn(module_argv(module))
        write_frame(child.stdin, b"?", b"not a frame this child understands")
        await child.stdin.drain()
        child.stdin.close()
        await child.wait()

    asyncio.run(crash("filters.offload"))
    asyncio.run(crash("relay.events.process"))
""")


def test_children_log_as_the_relay_does(tmp_path: Path) -> None:
    """`--log-format journal` chosen by the operator (no $JOURNAL_STREAM to detect) reaches
    the children: their tracebacks are prefixed line by line, at crit."""
    log = tmp_path / "stderr"
    with open(log, "wb") as err:
        subprocess.run([sys.executable, "-c", CHILDREN, "journal"], stderr=err, cwd=ROOT,
                       env=env_without_journal(FLOODGATE_STORE_URL="sqlite://"),
                       check=True, timeout=120)
    text = log.read_text()
    for where in ("filters/offload.py", "relay/events/process.py"):
        assert re.search(rf"^<2>  File \".*{where}\"", text, re.M), text
    assert "Traceback" in text
    assert all(line.startswith("<2>") for line in text.splitlines()), text


def test_a_command_that_cannot_start_says_so_as_an_error_under_journald(tmp_path: Path) -> None:
    """A missing configuration is printed by the CLI itself, outside logging: under journald
    it must still be an error (`<3>`), or `journalctl -p warning` shows nothing of why
    `serve` would not start."""
    log = tmp_path / "stderr"
    env = env_without_journal(JOURNAL_STREAM=journal_stream(log))
    with log.open("w") as stderr:
        done = subprocess.run([sys.executable, "-m", "relay.cli", "-c",
                               str(tmp_path / "missing.toml"), "serve"],
                              stderr=stderr, stdout=subprocess.DEVNULL, env=env, timeout=60)
    assert done.returncode == 2
    lines = log.read_text().splitlines()
    assert lines and all(line.startswith("<3>") for line in lines), lines
    assert "file not found" in lines[0]
    plain = subprocess.run([sys.executable, "-m", "relay.cli", "-c",
                            str(tmp_path / "missing.toml"), "serve"], capture_output=True,
                           text=True, env=env_without_journal(), timeout=60)
    assert plain.stderr.startswith(f"{tmp_path / 'missing.toml'}: file not found")
