"""The operator's view of the queue and requests on it (list, show, hold, release, flush,
delete), for the CLI and the web; safe while `floodgate serve` runs. Named for what it is
rather than `queue`, which is the standard library's.

The running relay owns `queue/` and `state/`; the CLI only reads them, removes whole
messages, and leaves requests the relay picks up on its next scan: `hold/<id>` markers and
`flush/<id>` (or `flush/ALL`) files. No locks, no socket: the directory is the interface.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from relay.delivery.spool import Envelope, MessageState, Spool

FLUSH_ALL = "ALL"


@dataclass(slots=True)
class QueuedMessage:
    envelope: Envelope
    state: MessageState
    held: bool
    pending: list[str] = field(default_factory=list)

    @property
    def queue_id(self) -> str:
        return self.envelope.queue_id

    def last_reply(self) -> str:
        replies = [self.state.recipients[r].reply for r in self.pending
                   if self.state.recipients[r].reply]
        return replies[0] if replies else ""


def load(spool: Spool, queue_id: str) -> QueuedMessage:
    envelope = spool.read_envelope(queue_id)
    state = spool.load_state(envelope)
    return QueuedMessage(envelope, state, (spool.hold / queue_id).exists(), state.pending())


def listing(spool: Spool) -> list[QueuedMessage]:
    """Every message in the queue, oldest first; one that vanishes while listed is skipped."""
    out = []
    for queue_id in spool.ids():
        with contextlib.suppress(FileNotFoundError, ValueError):
            out.append(load(spool, queue_id))
    return out


def resolve(spool: Spool, prefix: str) -> str:
    """The queue id that `prefix` names; ValueError when none or several match."""
    if spool.path(prefix).exists():
        return prefix
    matches = [i for i in spool.ids() if i.startswith(prefix.upper())]
    if len(matches) != 1:
        raise ValueError(f"{prefix}: " + ("no such message" if not matches else
                                          f"ambiguous ({len(matches)} messages match)"))
    return matches[0]


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
    os.close(fd)


def request_flush(spool: Spool, queue_id: str | None = None) -> Path:
    """Ask the relay to try now (one message, or all of them); returns the request file."""
    path = spool.flush / (queue_id or FLUSH_ALL)
    _touch(path)
    return path


def take_flush_requests(spool: Spool) -> set[str]:
    """For the relay: the pending requests (ids or FLUSH_ALL), removed as they are read."""
    try:
        names = os.listdir(spool.flush)
    except FileNotFoundError:
        return set()
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (spool.flush / name).unlink()
    return set(names)


def hold(spool: Spool, queue_id: str) -> None:
    _touch(spool.hold / queue_id)


def release(spool: Spool, queue_id: str) -> bool:
    """Remove the hold and ask for an attempt now; False when it was not held."""
    try:
        (spool.hold / queue_id).unlink()
    except FileNotFoundError:
        return False
    request_flush(spool, queue_id)
    return True


def delete(spool: Spool, queue_id: str) -> bool:
    """Drop a message without notice (like `postsuper -d`); an attempt already under way
    may still complete."""
    return spool.remove(queue_id)
