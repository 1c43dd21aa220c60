"""Logging: one `key=value` line per decision, easy to grep and to parse."""

from __future__ import annotations

import logging
import re
import sys

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


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
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
