"""Delivery status notifications (RFC 3464): how a sender learns that mail did not arrive.

A DSN is an ordinary spooled message with the null sender, so it is delivered by the same
workers, and it can never cause another DSN (RFC 5321 6.1: no notification to `<>`).
"""

from __future__ import annotations

import email.utils
import re
import secrets
import time
from dataclasses import dataclass

from relay.delivery.spool import Envelope, new_queue_id

_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
MAX_HEADERS = 64 * 1024


@dataclass(frozen=True, slots=True)
class Failure:
    """One recipient that will not be delivered, and why."""

    recipient: str
    status: str  # RFC 3463 code for the Status: field, e.g. 5.1.1 or 4.4.7 (expired)
    diagnostic: str  # the next hop's reply, or our own explanation
    remote_mta: str = ""
    last_attempt: float = 0.0


def status_of(reply: str, default: str = "5.0.0") -> str:
    """The enhanced status code in a reply such as `550 5.1.1 User unknown`."""
    parts = reply.split()
    if len(parts) > 1 and _STATUS.match(parts[1]):
        return parts[1]
    return default


def wants_dsn(envelope: Envelope) -> bool:
    """Never to the null sender: that is every DSN, so no loops."""
    return bool(envelope.mail_from.strip("<>"))


def _one_line(text: str) -> str:
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())[:900]


def _date(ts: float) -> str:
    return email.utils.formatdate(ts, localtime=True)


def original_headers(message: bytes) -> bytes:
    """The header section of the original (with our Received:), for text/rfc822-headers."""
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[: end + 2]
    return head[:MAX_HEADERS]


def build(envelope: Envelope, message: bytes, failures: list[Failure], *, hostname: str,
          node: str) -> tuple[Envelope, bytes]:
    """A multipart/report DSN for `failures`, addressed to the envelope sender."""
    now = time.time()
    queue_id = new_queue_id()
    boundary = f"{queue_id}.{secrets.token_hex(6)}/{hostname}"
    sender = envelope.mail_from
    human = [
        f"This is the mail system at host {hostname}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "It is attached below (headers only).",
        "",
    ]
    human += [f"<{f.recipient}>: {_one_line(f.diagnostic)}" for f in failures]
    per_message = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Floodgate-Queue-ID: {envelope.queue_id}",
        f"Arrival-Date: {_date(envelope.received)}",
    ]
    blocks = ["\r\n".join(per_message)]
    for f in failures:
        lines = [f"Final-Recipient: rfc822; {f.recipient}", "Action: failed",
                 f"Status: {f.status}"]
        if f.remote_mta:
            lines.append(f"Remote-MTA: dns; {f.remote_mta}")
        if f.diagnostic:
            lines.append(f"Diagnostic-Code: smtp; {_one_line(f.diagnostic)}")
        lines.append(f"Last-Attempt-Date: {_date(f.last_attempt or now)}")
        blocks.append("\r\n".join(lines))
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {_date(now)}",
        f"Message-ID: <{queue_id}.dsn@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        "\r\n\r\n".join(blocks),
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "Content-Description: Undelivered Message Headers",
        "",
    ]
    body = "\r\n".join(head).encode("ascii", "replace") + b"\r\n"
    body += original_headers(message) + f"\r\n--{boundary}--\r\n".encode()
    dsn_envelope = Envelope(queue_id=queue_id, mail_from="", rcpt_tos=[sender], client="",
                            helo=hostname, node=node, received=now, size=len(body))
    return dsn_envelope, body
