"""Greylisting's tables: the triplets seen, and the networks that passed (auto-allowlist).

Shared by every relay on the store, so a retry that lands on another relay passes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from relay.store.base import Base


class GreylistTriplet(Base):
    """One (client network, envelope sender, recipient) seen at RCPT. Keyed by a hash of
    the three: an address may be 320 characters, and two of them make a long btree key."""

    __tablename__ = "greylist"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex
    network: Mapped[str] = mapped_column(String(49))
    sender: Mapped[str] = mapped_column(String(320))
    recipient: Mapped[str] = mapped_column(String(320))
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    passed: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)

    # the network's pending triplets, counted before a new one is stored ([greylist]
    # max_pending): a bot with a fresh sender every attempt cannot grow the table unbounded
    __table_args__ = (Index("ix_greylist_network_first_seen", "network", "first_seen"),)


class GreylistHost(Base):
    """A client network that retried and passed: never greylisted until `expires`."""

    __tablename__ = "greylist_hosts"
    network: Mapped[str] = mapped_column(String(49), primary_key=True)
    expires: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    passes: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (Index("ix_greylist_hosts_expires", "expires"),)
