"""The core tables: events, aliases, blocks, the allowlist (relay/store/schema.py has them all)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.functions import Function

from relay.store.base import Base, BigId
from relay.store.sqltypes import UTCTimestamp


class Event(Base):
    """One SMTP decision: who asked what, and what the relay answered."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(UTCTimestamp())  # an integer on SQLite: see sqltypes
    node: Mapped[str] = mapped_column(String(64))
    client: Mapped[str] = mapped_column(String(45))
    host: Mapped[str] = mapped_column(String(49))  # aggregation key: IPv4 address or IPv6 prefix
    helo: Mapped[str] = mapped_column(String(255), default="")
    sender: Mapped[str] = mapped_column(String(320), default="")
    recipient: Mapped[str] = mapped_column(Text, default="")
    stage: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))
    # events this row stands for: more than 1 when a flood was folded into one row per
    # host, reason and minute (relay/events/writer.py); count them with `events_counted()`,
    # never count(*)
    count: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    code: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    queue_id: Mapped[str] = mapped_column(String(32), default="")
    # the SMTP session's id: the `[ref ...]` in its replies, what `floodgate trace` finds
    session: Mapped[str] = mapped_column(String(16), default="", server_default="")
    message_id: Mapped[str] = mapped_column(String(255), default="", server_default="")
    # a row folded in a flood: the other sessions it stands for (`session` is the first's),
    # blank-separated, at most FOLDED_SESSIONS of them, then `+` if there were more
    folded: Mapped[str] = mapped_column(Text, default="", server_default="")

    __table_args__ = (
        Index("ix_events_ts", "ts"),
        Index("ix_events_host_ts", "host", "ts"),
        Index("ix_events_reason_ts", "reason", "ts"),
        Index("ix_events_session", "session"),
        # only accepted and delivered messages carry these: partial, small, cheap to write
        Index("ix_events_queue_id", "queue_id", sqlite_where=text("queue_id != ''"),
              postgresql_where=text("queue_id != ''")),
        Index("ix_events_message_id", "message_id", sqlite_where=text("message_id != ''"),
              postgresql_where=text("message_id != ''")),
        # `floodgate trace --from/--to` (case-blind): only events that carry an address
        Index("ix_events_sender_lower", func.lower(text("sender")),
              sqlite_where=text("sender != ''"), postgresql_where=text("sender != ''")),
        Index("ix_events_recipient_lower", func.lower(text("recipient")),
              sqlite_where=text("recipient != ''"), postgresql_where=text("recipient != ''")),
        # only folded rows (a few a minute in a flood): `trace REF` reads them all
        Index("ix_events_folded_ts", "ts", sqlite_where=text("folded != ''"),
              postgresql_where=text("folded != ''")),
    )


# The host of accepted events of many hosts, summarised in a flood (relay/events/writer.py)
SUMMARY_HOST = "*"


def events_counted() -> Function[int]:
    """How many events the selected rows of `events` stand for: sum(count), not count(*).
    Every query that counts events counts them with this."""
    return func.sum(Event.count)


class Alias(Base):
    """A valid recipient: the address (domain normalised) and, for Postfix maps, its target."""

    __tablename__ = "aliases"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    domain: Mapped[str] = mapped_column(String(255), index=True)
    target: Mapped[str] = mapped_column(Text, default="")
    trap: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Meta(Base):
    """Counters relays poll to notice changes made elsewhere (e.g. `aliases_generation`)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Block(Base):
    """A network refused at connect (and by the firewall) until `expires`.

    One row per network: a block that expires stays as history, and a host that comes back
    re-uses its row with a higher `level` (longer blocks, like fail2ban's recidive jail).
    """

    __tablename__ = "blocks"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    network: Mapped[str] = mapped_column(String(49), unique=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    score: Mapped[float] = mapped_column(Float, default=0.0)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(16), default="auto")  # auto | manual
    level: Mapped[int] = mapped_column(Integer, default=1)
    node: Mapped[str] = mapped_column(String(64), default="")


class Allow(Base):
    """A network that is never blocked, whatever its score."""

    __tablename__ = "allowlist"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    network: Mapped[str] = mapped_column(String(49), unique=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
