"""The sender lists: envelope senders, sender domains and HELO names allowed or refused
(Postfix's check_sender_access and check_helo_access, rspamd's multimap)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from relay.store.base import Base, BigId


class SenderRule(Base):
    """One entry: `pattern` (an address, a domain and its subdomains, or `<>`) in the
    `allow` or `block` list, matched against the envelope sender and the From header's
    domain (`field` sender) or the client's HELO name (`field` helo)."""

    __tablename__ = "sender_lists"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    list: Mapped[str] = mapped_column(String(8))  # allow | block
    field: Mapped[str] = mapped_column(String(8))  # sender | helo
    pattern: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("list", "field", "pattern"),)
