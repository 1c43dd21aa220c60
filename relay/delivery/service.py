"""Delivery: carry spooled mail to each domain's next hop, one recipient's fate at a time.

The spool is the queue. The parts, one job a module, import one way (down this list):
  scheduler.py  when each message is tried, over which connection task; the in-memory queue
  client.py     SMTP to a hop: connect, STARTTLS, one transaction per unit, reuse
  outcomes.py   each recipient's reply into its progress, as an event and a log line
  bounces.py    the DSN for recipients that will not be delivered
  routing.py    the next hop for a recipient, the hosts (MX) for a hop
  pressure.py   when new mail must wait (spool size, free disk, null-sender share)
  work.py       the shared data: Entry, Unit, Destination, Result
This class builds them from the config and is what the relay holds.
"""

from __future__ import annotations

from relay.config import Config
from relay.delivery.bounces import Bounces
from relay.delivery.client import NextHopClient
from relay.delivery.outcomes import Outcomes
from relay.delivery.pressure import BackPressure
from relay.delivery.routing import Router
from relay.delivery.scheduler import Scheduler
from relay.delivery.spool import Spool
from relay.events.writer import EventWriter


class DeliveryService:
    """The scheduler and what it uses, plus back-pressure for the SMTP handler."""

    def __init__(self, config: Config, spool: Spool, events: EventWriter):
        settings, relay = config.delivery, config.relay
        self.router = Router(config)
        self.pressure = BackPressure(config, spool)
        bounces = Bounces(spool, relay.hostname, relay.node)
        self.outcomes = Outcomes(config, events, bounces)
        self.scheduler = Scheduler(
            settings, spool, self.router.route,
            NextHopClient(settings, relay.hostname, self.router.hosts),
            self.outcomes, self.pressure)

    def configure(self, config: Config) -> None:
        """What a reload may change here: the hosted domains' next hops and the null-sender
        share. [delivery] itself is read once (the scheduler's queue and timers)."""
        self.router.hosted = config.hosted()
        self.pressure.config = config

    async def start(self) -> None:
        """Load the spool (what a crash or restart left), then run the scheduler."""
        await self.scheduler.start()

    async def stop(self, grace: float) -> None:
        """Let attempts in flight finish within `grace`; anything cut off is retried later."""
        await self.scheduler.stop(grace)

    @property
    def queued(self) -> int:
        """Messages in the delivery queue."""
        return self.scheduler.queued

    def oldest_received(self) -> float | None:
        """When the oldest queued message not on hold was received (epoch seconds)."""
        return self.scheduler.oldest_received()

    def queue_full(self) -> str | None:
        """Why new mail must wait (spool too big, disk too full), or None."""
        return self.pressure.queue_full(self.scheduler.queued)

    def null_sender_full(self, client: str) -> str | None:
        """Why `client` may not queue another null-sender message, or None."""
        return self.pressure.null_sender_full(client)
