"""The durable spool: a message is on disk, fsync'd, before the relay says 250.

One file per message: a header line holding the envelope as JSON, then the message bytes
exactly as they will go to the next hop. Written under a temporary name in `tmp/`, fsync'd,
renamed into `queue/`, and the directory fsync'd, so a crash leaves either nothing or a
complete file, never half of one.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

MAGIC = b"FLOODGATE-SPOOL 1 "


@dataclass(slots=True)
class Envelope:
    queue_id: str
    mail_from: str
    rcpt_tos: list[str]
    client: str
    helo: str
    node: str
    received: float
    size: int = 0
    mail_options: list[str] = field(default_factory=list)


def new_queue_id() -> str:
    """Sortable by arrival (microseconds, hex) and unique across relays (random tail)."""
    return f"{time.time_ns() // 1000:X}{secrets.token_hex(3).upper()}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, root: Path):
        self.root = root
        self.tmp = root / "tmp"
        self.queue = root / "queue"

    def prepare(self) -> None:
        """Create the directories and drop temporaries a crash left behind."""
        for d in (self.root, self.tmp, self.queue):
            d.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.iterdir():
            stale.unlink(missing_ok=True)
        probe = self.tmp / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()

    def path(self, queue_id: str) -> Path:
        return self.queue / f"{queue_id}.msg"

    def write(self, envelope: Envelope, message: bytes) -> Path:
        """Store durably; returns the queue file. Raises OSError when the disk refuses."""
        header = MAGIC + json.dumps(asdict(envelope), separators=(",", ":")).encode() + b"\n"
        tmp = self.tmp / f"{envelope.queue_id}.tmp"
        final = self.path(envelope.queue_id)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            with os.fdopen(fd, "wb", closefd=False) as fh:
                fh.write(header)
                fh.write(message)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.rename(tmp, final)
        _fsync_dir(self.queue)
        return final

    def read(self, queue_id: str) -> tuple[Envelope, bytes]:
        return read_file(self.path(queue_id))

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.queue.glob("*.msg"))


def read_file(path: Path) -> tuple[Envelope, bytes]:
    raw = path.read_bytes()
    header, _, message = raw.partition(b"\n")
    if not header.startswith(MAGIC):
        raise ValueError(f"{path}: not a Floodgate spool file")
    return Envelope(**json.loads(header[len(MAGIC):])), message
