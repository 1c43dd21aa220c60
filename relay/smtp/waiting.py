"""The connections of a Postfix-facing service (policy, milter) that wait for their client,
oldest first, so that at the connection cap a new one closes the one that waited longest.

Refusing the new connection instead let one local client hold every slot with idle or
one-byte-at-a-time connections and lock Postfix out (every message then got Postfix's
default action, a 4xx). Postfix reconnects when its policy connection is closed, and opens a
milter connection per SMTP session, so the one closed costs at most one retry.
"""

from __future__ import annotations

import asyncio
import logging

from relay.logs import kv


class Waiting:
    """Connections waiting for a request, in the order they started waiting."""

    def __init__(self, service: str, cap: int, log: logging.Logger):
        self.service, self.cap, self.log = service, cap, log
        self._since: dict[asyncio.StreamWriter, object] = {}

    def wait(self, writer: asyncio.StreamWriter, peer: object) -> None:
        """`writer`'s connection now waits for its client (to the end of the line)."""
        self._since.pop(writer, None)
        self._since[writer] = peer

    def done(self, writer: asyncio.StreamWriter) -> bool:
        """The wait is over; False if the connection was closed meanwhile for a new one."""
        if writer not in self._since:
            return False
        del self._since[writer]
        return True

    def evict_oldest(self) -> bool:
        """Close the connection that has waited longest; False if none waits (every one is
        busy with a decision, which is bounded: it is the relay's own work)."""
        if not self._since:
            return False
        oldest, peer = next(iter(self._since.items()))
        del self._since[oldest]
        self.log.warning("%s connection closed %s", self.service, kv(
            peer=peer, reason=f"waited longest of {self.cap} connections, closed for a new one"))
        oldest.transport.abort()
        return True
