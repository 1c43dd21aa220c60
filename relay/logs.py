"""Logging: one `key=value` line per decision, easy to grep and to parse."""

from __future__ import annotations

import logging
import sys

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@/+[]<>,=")


def kv(**fields: object) -> str:
    """Render fields in logfmt; values with spaces or quotes are quoted."""
    out = []
    for key, value in fields.items():
        if value is None or value == "":
            continue
        text = str(value)
        if not set(text) <= _SAFE:
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") \
                .replace("\r", "\\r") + '"'
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
    # aiosmtpd logs every command at INFO; our decision lines say what matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
