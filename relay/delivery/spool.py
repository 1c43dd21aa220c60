"""The durable spool: a message is on disk, fsync'd, before the relay says 250.

One file per message: a header line holding the envelope as JSON, then the message bytes
exactly as they will go to the next hop. Written under a temporary name in `tmp/`, fsync'd,
renamed into `queue/`, and the directory fsync'd, so a crash leaves either nothing or a
complete file, never half of one.

Delivery progress lives beside it in `state/<id>.json` (which recipients are done, the last
reply, the next attempt), replaced atomically but not fsync'd: losing it only means a
recipient is tried again, never that one is dropped. `hold/<id>` marks a held message and
files in `flush/` ask the running relay to retry now; both are written by the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

MAGIC = b"FLOODGATE-SPOOL 1 "
# How aiosmtpd, and spool files written by earlier versions, spell the null reverse path.
NULL_SENDER_TEXT = "<>"


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

    def __post_init__(self) -> None:
        """The null sender is "" here, whoever wrote the envelope: aiosmtpd says "<>", and
        sent on as such it is refused (aiosmtplib 5) or sent as `<<>>` (4.x). Files
        already spooled with "<>" are read through here too, so they are delivered."""
        if self.mail_from.strip() == NULL_SENDER_TEXT:
            self.mail_from = ""


class IncompleteEnvelope(ValueError):
    """A file in queue/ whose envelope line is not all there: not a message (yet).
    Spool.write renames only complete files into queue/; this guards any other writer."""


def new_queue_id() -> str:
    """Sortable by arrival (microseconds, hex) and unique across relays (random tail)."""
    return f"{time.time_ns() // 1000:X}{secrets.token_hex(3).upper()}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Recipient states: pending until the next hop says 250 (delivered) or 5xx / the lifetime
# runs out (bounced); a message leaves the spool when none is pending.
PENDING, DELIVERED, BOUNCED = "pending", "delivered", "bounced"


@dataclass(slots=True)
class RecipientState:
    status: str = PENDING
    attempts: int = 0
    reply: str = ""  # the last reply from the next hop, or why there was none
    hop: str = ""


@dataclass(slots=True)
class MessageState:
    recipients: dict[str, RecipientState] = field(default_factory=dict)
    attempts: int = 0
    next_attempt: float = 0.0
    last_attempt: float = 0.0

    @classmethod
    def fresh(cls, envelope: Envelope) -> MessageState:
        return cls({r: RecipientState() for r in dict.fromkeys(envelope.rcpt_tos)})

    def pending(self) -> list[str]:
        return [r for r, s in self.recipients.items() if s.status == PENDING]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes, envelope: Envelope) -> MessageState:
        data = json.loads(raw)
        state = cls.fresh(envelope)
        for rcpt, item in data.get("recipients", {}).items():
            if rcpt in state.recipients:
                state.recipients[rcpt] = RecipientState(**item)
        state.attempts = int(data.get("attempts", 0))
        state.next_attempt = float(data.get("next_attempt", 0.0))
        state.last_attempt = float(data.get("last_attempt", 0.0))
        return state


class Spool:
    def __init__(self, root: Path):
        self.root = root
        self.tmp = root / "tmp"
        self.queue = root / "queue"
        self.state = root / "state"
        self.hold = root / "hold"
        self.flush = root / "flush"
        # Called (from the writing thread) with each envelope once it is safely queued.
        self.listeners: list[Callable[[Envelope], None]] = []

    def prepare(self) -> None:
        """Create the directories and drop temporaries a crash left behind."""
        for d in (self.root, self.tmp, self.queue, self.state, self.hold, self.flush):
            d.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.iterdir():
            stale.unlink(missing_ok=True)
        probe = self.tmp / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()

    def path(self, queue_id: str) -> Path:
        return self.queue / f"{queue_id}.msg"

    def write(self, envelope: Envelope, message: bytes, *more: bytes | memoryview) -> Path:
        """Store durably; returns the queue file. Raises OSError when the disk refuses.

        The message may come in parts (trace header, then body), written one after the
        other: joining a 20 MB body to its `Received:` line would copy it for nothing.
        """
        header = MAGIC + json.dumps(asdict(envelope), separators=(",", ":")).encode() + b"\n"
        tmp = self.tmp / f"{envelope.queue_id}.tmp"
        final = self.path(envelope.queue_id)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            with os.fdopen(fd, "wb", closefd=False) as fh:
                fh.write(header)
                fh.write(message)
                for part in more:
                    fh.write(part)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.rename(tmp, final)
        _fsync_dir(self.queue)
        for listener in self.listeners:
            # The message is queued whatever a listener does; the periodic scan catches up.
            with contextlib.suppress(Exception):
                listener(envelope)
        return final

    def read(self, queue_id: str) -> tuple[Envelope, bytes]:
        return read_file(self.path(queue_id))

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.queue.glob("*.msg"))

    def read_envelope(self, queue_id: str) -> Envelope:
        """The envelope alone: the header line, without reading the message.
        IncompleteEnvelope while that line has no end yet."""
        path = self.path(queue_id)
        with open(path, "rb") as fh:
            header = fh.readline()
        if not header.endswith(b"\n"):
            raise IncompleteEnvelope(f"{path}: the envelope line is not complete")
        return _envelope(path, header.rstrip(b"\n"))

    def state_path(self, queue_id: str) -> Path:
        return self.state / f"{queue_id}.json"

    def load_state(self, envelope: Envelope) -> MessageState:
        """Saved progress, or a fresh state when there is none or it is unreadable."""
        try:
            return MessageState.from_json(self.state_path(envelope.queue_id).read_bytes(),
                                          envelope)
        except (OSError, ValueError, TypeError, AttributeError):
            return MessageState.fresh(envelope)

    def save_state(self, queue_id: str, state: MessageState) -> None:
        """Replace the state file atomically (temporary name in the same directory)."""
        self.state.mkdir(parents=True, exist_ok=True)
        tmp = self.state / f".{queue_id}.{os.getpid()}.tmp"
        tmp.write_bytes(state.to_json())
        os.replace(tmp, self.state_path(queue_id))

    def remove(self, queue_id: str) -> bool:
        """Drop a message and its state; the message first, so a crash in between leaves
        only an orphan state file (ignored), never a message without its progress."""
        try:
            self.path(queue_id).unlink()
            removed = True
        except FileNotFoundError:
            removed = False
        for extra in (self.state_path(queue_id), self.hold / queue_id):
            with contextlib.suppress(FileNotFoundError):
                extra.unlink()
        return removed

    def held(self) -> set[str]:
        try:
            return {p.name for p in self.hold.iterdir()}
        except FileNotFoundError:
            return set()


def read_file(path: Path) -> tuple[Envelope, bytes]:
    raw = path.read_bytes()
    header, _, message = raw.partition(b"\n")
    return _envelope(path, header), message


def _envelope(path: Path, header: bytes) -> Envelope:
    if not header.startswith(MAGIC):
        raise ValueError(f"{path}: not a Floodgate spool file")
    return Envelope(**json.loads(header[len(MAGIC):]))
