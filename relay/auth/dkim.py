"""DKIM verification (RFC 6376): every signature of a message. STUB: filled in by #19."""

from __future__ import annotations

from relay.auth.lookup import TxtLookup
from relay.auth.verdicts import DkimResult


async def verify_dkim(message: bytes, txt: TxtLookup) -> list[DkimResult]:
    """One result per DKIM-Signature header, in header order; [] when unsigned."""
    return []
