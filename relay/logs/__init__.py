"""Logging: one `key=value` line per decision, easy to grep and to parse.

Two line formats, chosen once at start (`setup`):

- plain: `2026-12-03T13:29:35.123+00:00 WARNING floodgate.smtp ...`, the time in UTC with
  its offset, so lines from relays in different zones (or a laptop) sort and compare;
- journal: `<4>WARNING floodgate.smtp ...`, the sd-daemon priority prefix that journald
  parses from a service's stderr (SyslogLevelPrefix=, on by default), so `journalctl -p
  warning` works. No timestamp: the journal stamps every entry itself (microseconds, shown
  in UTC with `journalctl --utc`), and a second time in the message would only disagree
  with it. Every line of a record carries the prefix, so a traceback is one priority.

`auto` picks journal when stderr is the stream systemd says it connected to the journal
($JOURNAL_STREAM, checked against stderr's device and inode as sd_journal_stream_fd(3)
asks, so a command run from a shell inside the service still logs plain).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Literal

from filters import childproc

_UNSAFE = re.compile(r"[^a-zA-Z0-9\-_.:@/+\[\]<>,=]")  # anything else: the value is quoted
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """Control characters (C0, DEL, C1, line and paragraph separators) as `\\n`, `\\xNN`
    or `\\uNNNN`: client-chosen text can neither end a log line, nor drive a terminal
    (ANSI escapes), nor carry a NUL into the store."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c.isprintable() or c == " ":
            out.append(c)
        elif c in _NAMED:
            out.append(_NAMED[c])
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}")
    return "".join(out)


def kv(**fields: object) -> str:
    """Render fields in logfmt; values with spaces or quotes are quoted, control
    characters escaped (see `printable`), so one decision is always one line."""
    out = []
    for key, value in fields.items():
        if value is None or value == "":
            continue
        text = str(value)
        if _UNSAFE.search(text):
            text = '"' + printable(text.replace("\\", "\\\\")).replace('"', '\\"') + '"'
        out.append(f"{key}={text}")
    return " ".join(out)


Format = Literal["auto", "plain", "journal"]
FORMATS: tuple[Format, ...] = ("auto", "plain", "journal")
# syslog(3) priorities of the logging levels (sd-daemon(3): <3> err ... <7> debug)
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
            logging.DEBUG: 7}


class PlainFormatter(logging.Formatter):
    """`2026-12-03T13:29:35.123+00:00 LEVEL logger message`: UTC, milliseconds, offset."""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        return f"{stamp}.{int(record.msecs):03d}+00:00"


class JournalFormatter(logging.Formatter):
    """`<N>LEVEL logger message`, the prefix on every line of the record: journald reads a
    stream line by line, and a traceback's lines would otherwise fall back to info."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def priority(levelno: int) -> int:
    """The syslog priority of a logging level; levels in between take the next one up."""
    for level in sorted(PRIORITY, reverse=True):
        if levelno >= level:
            return PRIORITY[level]
    return 7


def under_journald(stream: object = None) -> bool:
    """Whether `stream` (stderr) is the journal stream systemd set up for this service."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = expected.partition(":")
    try:
        fd = (stream or sys.stderr).fileno()  # type: ignore[attr-defined]
        st = os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def resolve(fmt: str) -> Format:
    """`auto` made definite for this process's stderr."""
    if fmt == "auto":
        return "journal" if under_journald() else "plain"
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    return fmt  # type: ignore[return-value]


_chosen: Format = "plain"


def error_prefix() -> str:
    """What a line written to stderr outside logging (the CLI's own errors: a missing or
    broken configuration) starts with, so journald files it as an error too."""
    return f"<{PRIORITY[logging.ERROR]}>" if _chosen == "journal" else ""


def setup(level: str = "INFO", fmt: str = "auto") -> None:
    """Log to stderr in `fmt` at `level`, for this process and the children it starts."""
    global _chosen
    chosen = _chosen = resolve(fmt)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter() if chosen == "journal" else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The format uses none of these: skip finding the caller's frame and naming the
    # thread and process for every record (the logging HOWTO's "Optimization" list).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiosmtpd logs every command at INFO; our decision lines say what matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # Python's warnings at <4>, not as bare stderr text
    # A crash's traceback in the same format, at crit: not an unprefixed block of info lines.
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread
    # Child processes (the event writer, the MIME split) start through `python -m
    # relay.logs`, which sets up the same logging before it runs them.
    childproc.launch_through(["relay.logs", "--level", logging.getLevelName(root.level),
                              "--format", chosen])


def _uncaught(kind: type[BaseException], value: BaseException,
              tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("floodgate").critical("uncaught exception", exc_info=(kind, value, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("floodgate").critical(
        "uncaught exception in thread %s", args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]


def child_main(argv: Sequence[str]) -> None:
    """`python -m relay.logs [--level L] [--format F] MODULE ARG...`: set up logging as the
    parent did, then run MODULE as `__main__` with ARG... as its arguments."""
    import runpy

    args = list(argv)
    options = {"--level": "INFO", "--format": "auto"}
    while args and args[0] in options:
        options[args[0]] = args[1]
        del args[:2]
    module, *rest = args
    setup(options["--level"], options["--format"])
    sys.argv = [sys.argv[0], *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
