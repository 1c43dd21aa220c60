"""What a message is made of, as digests: the keys of the outbreak verdict cache.

A worm resends one payload with new headers, recipients, boundaries and cover text, so the
message as a whole never repeats; its decoded attachment does. Each MIME leaf (a part with no
sub-parts, found inside multiparts and forwarded message/rfc822 parts alike) is decoded from
base64, quoted-printable or uuencode and hashed.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
from dataclasses import dataclass

from filters.headers import split_head

MAX_LEAVES = 256


@dataclass(frozen=True, slots=True)
class Leaf:
    digest: str
    payload: bytes
    content_type: str
    filename: str | None


@dataclass(frozen=True, slots=True)
class Parts:
    leaves: tuple[Leaf, ...]
    body_digest: str
    # False when Python's parser saw defects or the part count ran over MAX_LEAVES: then
    # Python's idea of the parts may differ from clamd's, and a "clean" cache hit built on
    # it must not be trusted (an "infected" hit still may: that payload is in the message).
    trustworthy: bool


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def body_digest(message: bytes) -> str:
    """The body after the header block, line endings normalised (SMTP CRLF == file LF)."""
    _, body = split_head(message)
    return digest(body.replace(b"\r\n", b"\n"))


def split_parts(message: bytes) -> Parts:
    msg = email.message_from_bytes(message, policy=email.policy.compat32)
    leaves: list[Leaf] = []
    trustworthy = True
    for part in msg.walk():
        if part.defects:
            trustworthy = False
        if part.is_multipart():
            continue
        if len(leaves) >= MAX_LEAVES:
            trustworthy = False
            break
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            payload = b""
        leaves.append(Leaf(digest(payload), payload, part.get_content_type(),
                           part.get_filename()))
    return Parts(tuple(leaves), body_digest(message), trustworthy)
