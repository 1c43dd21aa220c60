"""A scanner's endpoints: how their addresses are written, and several of them used in turn.

Shared by clamd and spamd so that a site adding scanner hosts gets the same behaviour from
both: each call goes to the next endpoint in turn; one that cannot be reached or hangs is
skipped for `down_for` seconds (tried last, not never: if all are down one may be back); a
call that could not even connect is tried on the next endpoint at once, as nothing was sent;
a call that hung is not resent, as the scanner may still be working on it and a second
endpoint would only double the wait. `reachable()` tells the metrics (scanner up/down) what
the last call to each endpoint found, lone endpoints included.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

log = logging.getLogger("floodgate.endpoints")

DOWN_FOR = 10.0  # seconds an unreachable or hung endpoint is tried last


def parse_address(address: str) -> tuple[str, int] | str:
    """`host:port` / `[v6]:port` for TCP, anything with a slash (or `unix:` prefix) a socket."""
    if address.startswith("unix:"):
        return address[5:]
    if "/" in address:
        return address
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)", address) or re.fullmatch(
        r"([^:\[\]/]+):(\d+)", address)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"expected \"host:port\" or a socket path, got {address!r}")
    return m.group(1), int(m.group(2))


class Endpoint(Protocol):
    @property
    def address(self) -> str: ...


E = TypeVar("E", bound=Endpoint)
R = TypeVar("R")


class Rotation(Generic[E]):
    """The endpoints of one scanner service, used in turn (see the module docstring).

    `unreachable`: what a call raises when no connection could be made (move on at once);
    `hung`: what it raises when the endpoint did not answer in time (mark it, give up).
    Anything else the call raises is the scanner's answer, or the caller's problem: the
    endpoint stays in the rotation. With one endpoint nothing is ever marked (there is
    nowhere else to go).
    """

    def __init__(self, endpoints: Sequence[E], *, service: str,
                 unreachable: tuple[type[BaseException], ...],
                 hung: tuple[type[BaseException], ...], down_for: float = DOWN_FOR,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not endpoints:
            raise ValueError(f"at least one {service} address")
        self.endpoints = list(endpoints)
        self.service = service
        self.unreachable = unreachable
        self.hung = hung
        self.down_for = down_for
        self._clock = clock
        self._next = 0
        self._down_until = [0.0] * len(self.endpoints)
        self._failing = [False] * len(self.endpoints)
        self.address = ",".join(e.address for e in self.endpoints)

    def order(self) -> list[int]:
        """Endpoints from the next in turn; those marked down last (tried if all are)."""
        n = len(self.endpoints)
        start, self._next = self._next, (self._next + 1) % n
        now = self._clock()
        ring = [(start + i) % n for i in range(n)]
        return ([i for i in ring if self._down_until[i] <= now]
                + [i for i in ring if self._down_until[i] > now])

    async def call(self, use: Callable[[E], Awaitable[R]]) -> R:
        """`use(endpoint)` on the next endpoint in turn. When none could be reached, what
        the last one raised."""
        order = self.order()
        for k, i in enumerate(order):
            try:
                result = await use(self.endpoints[i])
            except self.unreachable as e:
                self._mark_down(i, e)
                if k == len(order) - 1:
                    raise
                continue
            except self.hung as e:
                self._mark_down(i, e)
                raise
            self._down_until[i] = 0.0
            self._failing[i] = False
            return result
        raise AssertionError("unreachable: order() is never empty")

    def down(self) -> list[str]:
        """Addresses skipped now (tried only after the others)."""
        now = self._clock()
        return [e.address for e, until in zip(self.endpoints, self._down_until, strict=True)
                if until > now]

    def reachable(self) -> dict[str, bool]:
        """Each address: False while its last call could not connect or hung, True once
        one is answered (and before the first call: nothing says otherwise). Unlike
        `down()` this does not lapse after `down_for`: a dead endpoint stays False until it
        answers again."""
        return {e.address: not failing
                for e, failing in zip(self.endpoints, self._failing, strict=True)}

    def _mark_down(self, i: int, why: BaseException) -> None:
        self._failing[i] = True
        if len(self.endpoints) == 1:
            return
        if self._down_until[i] <= self._clock():
            log.warning("%s down, skipping it address=%s for=%gs error=%s", self.service,
                        self.endpoints[i].address, self.down_for,
                        str(why) or type(why).__name__)
        self._down_until[i] = self._clock() + self.down_for
