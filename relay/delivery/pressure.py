"""Back-pressure: why new mail must wait (the spool holds max_spool_messages, the disk is
nearly full), and why one client may not queue another null-sender message (it holds its
share of the spool already). The handler asks before it accepts; the scheduler tells it what
enters and leaves the spool."""

from __future__ import annotations

import collections
import os
import time

from blocklist.hosts import host_key
from relay.config import Config
from relay.delivery.spool import Envelope, Spool

DISK_CHECK_INTERVAL = 1.0


class BackPressure:
    def __init__(self, config: Config, spool: Spool):
        self.config = config
        self.settings = config.delivery
        self.spool = spool
        self._disk_checked = 0.0
        self._disk_low: str | None = None
        # Null-sender messages in the spool per client host key (not our own DSNs).
        self.null_queued: collections.Counter[str] = collections.Counter()

    def queue_full(self, queued: int) -> str | None:
        """Why new mail must wait with `queued` messages in the spool, or None."""
        limit = self.settings.max_spool_messages
        if limit and queued >= limit:
            return f"spool holds {queued} messages (limit {limit})"
        now = time.monotonic()
        if now - self._disk_checked >= DISK_CHECK_INTERVAL:
            self._disk_checked = now
            self._disk_low = None
            try:
                st = os.statvfs(self.spool.root)
                free = st.f_bavail * st.f_frsize
                if free < self.settings.min_free_disk:
                    self._disk_low = f"{free} bytes free (minimum {self.settings.min_free_disk})"
            except OSError as e:
                self._disk_low = f"cannot check free space: {e.strerror}"
        return self._disk_low

    def null_sender_full(self, client: str) -> str | None:
        """Why `client` may not queue another null-sender message, or None: it has its
        share (limits.null_sender_share of max_spool_messages) queued already."""
        share, limit = self.config.limits.null_sender_share, self.settings.max_spool_messages
        if not share or not limit:
            return None
        cap = max(1, round(share * limit))
        key = host_key(client, self.config.store.ipv6_prefix)
        queued = self.null_queued.get(key, 0)
        if queued < cap:
            return None
        return f"{queued} null-sender messages queued from {key} (share {cap})"

    def added(self, envelope: Envelope) -> None:
        """A message entered the scheduler's queue."""
        key = self._null_key(envelope)
        if key is not None:
            self.null_queued[key] += 1

    def removed(self, envelope: Envelope) -> None:
        """A message left the scheduler's queue."""
        key = self._null_key(envelope)
        if key is not None:
            self.null_queued[key] -= 1
            if self.null_queued[key] <= 0:
                del self.null_queued[key]

    def _null_key(self, envelope: Envelope) -> str | None:
        if envelope.mail_from or not envelope.client:
            return None
        return host_key(envelope.client, self.config.store.ipv6_prefix)
