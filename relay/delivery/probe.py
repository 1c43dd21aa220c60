"""The RCPT probe: ask a hosted domain's own server whether it takes an address, without
sending anything (`MAIL FROM:<>`, `RCPT TO`, `QUIT`; never DATA), as Postfix's verify(8).

Only a reply to RCPT decides: 2xx known, 5xx unknown. Everything else (no connection, a
timeout, a 4xx anywhere, a refused MAIL FROM:<>) is "could not say", which the relay turns into
`450 4.1.1`, never `550`: a broken next hop must not bounce mail for real users.
"""

from __future__ import annotations

import asyncio

import aiosmtplib

from relay.delivery.client import NextHopClient
from relay.delivery.routing import HopError

_QUITTING: set[asyncio.Task[None]] = set()


def _reply(e: aiosmtplib.SMTPResponseException) -> str:
    return f"{e.code} {' '.join(e.message.split())}"


async def probe(client: NextHopClient, hop: str, address: str) -> tuple[bool | None, str]:
    """(True, reply) for a 2xx to RCPT, (False, reply) for a 5xx, (None, why) otherwise.
    The caller bounds the time (asyncio.timeout): a cancelled probe closes its connection."""
    try:
        smtp, host = await client.open(hop)
    except HopError as e:
        return None, e.reply
    try:
        answer = await _ask(smtp, host, address)
    except BaseException:  # cancelled (the caller's timeout): no QUIT, just hang up
        smtp.close()
        raise
    # QUIT in the background: the answer is in, the sender at RCPT should not wait for it
    task = asyncio.create_task(client.quit(smtp))
    _QUITTING.add(task)
    task.add_done_callback(_QUITTING.discard)
    return answer


async def _ask(smtp: aiosmtplib.SMTP, host: str, address: str) -> tuple[bool | None, str]:
    try:
        try:
            await smtp.mail("")
        except aiosmtplib.SMTPResponseException as e:
            return None, f"MAIL FROM:<> refused by {host}: {_reply(e)}"
        try:
            response = await smtp.rcpt(address)
        except aiosmtplib.SMTPResponseException as e:
            if 500 <= e.code < 600:
                return False, f"{host} said {_reply(e)}"
            return None, f"{host} said {_reply(e)}"
        return True, f"{host} said {response.code} {' '.join(response.message.split())}"
    except (aiosmtplib.SMTPException, OSError) as e:
        return None, f"probe of {host} failed: {e or type(e).__name__}"
