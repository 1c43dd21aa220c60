"""The results each check returns: plain frozen dataclasses the DMARC evaluation, the
Authentication-Results header, events and `floodgate scan` all read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# RFC 8601 2.7: the result keywords the methods share (not every method uses each one).
Result = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror",
                 "policy"]


@dataclass(frozen=True)
class SpfResult:
    result: Result
    identity: Literal["mailfrom", "helo"]
    domain: str            # the domain checked (MAIL FROM's, or the HELO name)
    reason: str = ""


@dataclass(frozen=True)
class DkimResult:
    result: Result         # pass, fail, neutral, policy, temperror, permerror
    domain: str            # d=
    selector: str          # s=
    algorithm: str = ""    # a=, e.g. rsa-sha256, ed25519-sha256
    body_length_limited: bool = False  # l= present: a weakness, never a DMARC pass alone
    header_b: str = ""     # the first characters of b=, to tell signatures apart (RFC 6008)
    reason: str = ""


@dataclass(frozen=True)
class ArcResult:
    result: Literal["none", "pass", "fail"]
    instances: int = 0
    # d= of each ARC-Seal, newest (highest i=) first: who vouches for the chain
    sealers: tuple[str, ...] = field(default_factory=tuple)
    # the ARC-Authentication-Results payloads, newest first: what each sealer saw
    results: tuple[str, ...] = field(default_factory=tuple)
    reason: str = ""
    # a fail that met a key lookup DNS could not answer now: a retry may pass
    temporary: bool = False
