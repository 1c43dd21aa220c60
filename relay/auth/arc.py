"""ARC chain verification (RFC 8617). STUB: filled in by #19."""

from __future__ import annotations

from relay.auth.lookup import TxtLookup
from relay.auth.verdicts import ArcResult


async def verify_arc(message: bytes, txt: TxtLookup) -> ArcResult:
    """The chain's validation status (cv) as RFC 8617 5.2 computes it."""
    return ArcResult("none")
