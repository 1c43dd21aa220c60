"""What every authentication check asks DNS through: one async TXT lookup.

A timeout or SERVFAIL is `DnsTemporary` (a check that meets it answers temperror, never a
permanent failure); a name that does not exist or has no TXT records is an empty list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable


class DnsTemporary(Exception):
    """The answer could not be had now (timeout, SERVFAIL): try again later."""


# name (absolute or not, without a trailing dot needed) -> the TXT strings of each record,
# each record's strings joined (RFC 7208 3.3 and RFC 6376 3.6.2.2 both concatenate them).
TxtLookup = Callable[[str], Awaitable[list[bytes]]]
