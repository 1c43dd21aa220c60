"""Tables of the web API: the audit trail of changes, and API tokens kept only as hashes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from relay.store.base import Base, BigId


class AuditEntry(Base):
    """One change made through the API: who (token name), when, what, to which network."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    who: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(32))  # block, unblock, allow, unallow
    target: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_audit_log_ts", "ts"),)


class ApiToken(Base):
    """A token made by `floodgate token create`: the SHA-256 of the secret, never the secret."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))  # read | admin
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
