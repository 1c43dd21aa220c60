"""What a message is made of, as digests: the keys of the outbreak verdict cache.

A worm resends one payload with new headers, recipients, boundaries and cover text, so the
message as a whole never repeats; its decoded attachment does. Each MIME leaf (a part with no
sub-parts, found inside multiparts and forwarded message/* parts alike) is decoded from
base64, quoted-printable or uuencode and hashed. Text a multipart carries outside its parts
(preamble, epilogue) is a leaf too: a byte no leaf holds would not be in any key, so a
uuencoded virus in a preamble could hide behind parts cached as clean.

Why not just the email package: in an outbreak every message is split, and the email package
walks it line by line in Python with the GIL held (~1.4 ms for a 40 KB worm, ~0.8 s for a
20 MB message). _Splitter finds the same parts with bytes.find, a few regexes and binascii,
and tests/test_mime.py checks that it agrees with the email package part for part. Structure
it does not model goes to the email package (_split_parts_email) and is not trusted.

Trust: the cache may answer "clean" for the leaves only if our parts are clamd's parts (and
what lies outside them, the `skeleton`, is still scanned every time). When
they could differ (broken or ambiguous structure, a line clamd might take for a boundary,
content that does not decode cleanly, too deep, too many parts) `trustworthy` is False.
"""

from __future__ import annotations

import binascii
import email
import email.message
import email.policy
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from filters.archive import (
    CENTRAL_MAGIC,
    SNIFF_BYTES,
    ZIP_MAGIC,
    ZipSummary,
    sniff,
    zip_summary,
)
from filters.headers import head_end
from filters.tarball import MAX_BYTES as TAR_MAX_BYTES
from filters.tarball import headers_at_most, opened, tar_summary

MAX_LEAVES = 256
MAX_DEPTH = 20  # nested multipart and message/* parts
# What a split may cost the event loop, in steps: a header line, a boundary line, a line
# that may look like a boundary, a leaf (each about 0.3-0.6 us of Python). The cost of a
# split follows its structure, not its size: a 1 MB message of 87,000 part header lines
# took 50 ms, one that falls back to the email package 640 ms (262,000 lines). Ordinary
# mail takes tens to a few hundred steps; past INLINE_STEPS the split goes to the offload
# process (filters/offload.py), having cost the loop about 3 ms at most.
INLINE_STEPS = 5_000
# The email package costs about five steps a line (it reads every line in Python).
EMAIL_LINE_STEPS = 5
# Reading a zip's directory costs about 8 us an entry (84 ms for 10,000): some ten steps.
ZIP_ENTRY_STEPS = 10
# tarfile reads a header in Python, and the first members' first bytes: about 40 us each.
TAR_ENTRY_STEPS = 40
# A gzip attachment is inflated this far on the event loop (about 1 ms); one that inflates
# further is listed in the offload child (to filters.tarball.MAX_BYTES).
INLINE_INFLATE = 256 << 10

IDENTITY = frozenset(("", "7bit", "8bit", "binary"))
UUENCODE = frozenset(("x-uuencode", "uuencode", "uue", "x-uue"))


@dataclass(frozen=True, slots=True)
class Leaf:
    digest: str
    payload: bytes
    content_type: str
    filename: str | None
    kind: str = ""  # what the payload's first bytes say it is (filters.archive.sniff)


@dataclass(frozen=True, slots=True)
class Parts:
    leaves: tuple[Leaf, ...]
    body_digest: str
    # False when our idea of the parts may differ from clamd's (see the module docstring):
    # a "clean" cache hit built on it must not be trusted (an "infected" hit still may: that
    # payload is in the message).
    trustworthy: bool
    # Every byte of the message that is in no leaf: the message's and the parts' header
    # blocks, boundary lines. clamd reads these too (EICAR in a Subject is found), so a
    # "clean" answer from leaf digests holds only once these have been scanned as well.
    skeleton: bytes = b""
    # What each zip leaf (by content) declares it holds, read from its directory: clamd
    # does not say when it cut a member at MaxFileSize (see filters/archive.py).
    archives: tuple[ZipSummary, ...] = ()
    # (filename, content type) of the parts past MAX_LEAVES, not decoded: the attachment
    # policy still judges their names (10,000 attachments hide no .exe at the end)
    overflow: tuple[tuple[str, str], ...] = ()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the body as a whole ---------------------------------------------------------------------

# Big messages are handled in slices of this size: each C call (translate, a2b_base64)
# then holds the GIL for a few ms, not 100 ms, and the event loop gets its turns.
CHUNK = 1 << 20


def _drop(data: bytes, chars: bytes) -> bytes:
    """data.translate(None, chars), one slice at a time."""
    if len(data) <= CHUNK:
        return data.translate(None, chars)
    return b"".join(data[i:i + CHUNK].translate(None, chars)
                    for i in range(0, len(data), CHUNK))


def _body_digest(message: bytes) -> tuple[str, bool]:
    """body_digest(), and whether the message holds a bare CR. Without one, dropping every CR
    is the CRLF->LF normalisation, and bytes.translate() does that three times faster than
    bytes.replace()."""
    cut = head_end(message)
    if message.count(b"\r") != message.count(b"\r\n"):
        return digest(message[cut:].replace(b"\r\n", b"\n")), True
    h = hashlib.sha256()  # sha256 drops the GIL while it hashes a slice
    for i in range(cut, len(message), CHUNK):
        h.update(message[i:i + CHUNK].translate(None, b"\r"))
    return h.hexdigest(), False


def body_digest(message: bytes) -> str:
    """The body after the header block, line endings normalised (SMTP CRLF == file LF)."""
    return _body_digest(message)[0]


# -- part headers --------------------------------------------------------------------------

# A field line as the email package's feedparser tells one (its headerRE).
_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
_WANTED = (b"content-type", b"content-disposition", b"content-transfer-encoding")
# Header parameters the plain way: `type; name=token; name="quoted"`, no escapes, no RFC 2231
# (`name*=`), nothing outside printable ASCII. On these _params() gives what the email
# package's get_param() gives (a property test checks it); anything else is left to it.
_WS = rb"[ \t\r\n]*"
_TYPE = re.compile(_WS + rb'([^\x00-\x20\x7f-\xff;"=\\]+)' + _WS)
_PARAM = re.compile(rb";" + _WS + rb'(?:([^\x00-\x20\x7f-\xff;"=\\*]+)' + _WS + rb"(?:=" + _WS
                    + rb'(?:"([^\x00-\x1f\x7f-\xff"\\]*)"|([^\x00-\x20\x7f-\xff;"\\]*)))?'
                    + _WS + rb")?")
_MIME_TYPE = re.compile(r"[a-z0-9!#$%&'*+.^_`{|}~-]+/[a-z0-9!#$%&'*+.^_`{|}~-]+")
# RFC 2046 bchars less space and parentheses (clamd reads those as comments), at most 70.
_BCHARS = re.compile(rb"[0-9A-Za-z'+_,./:=?-]{1,70}")


class _Head(NamedTuple):
    body: int  # offset of the body in the message
    ctype: str
    boundary: str | None
    filename: str | None
    cte: str
    odd: bool  # headers clamd might read differently: do not trust the parts


def _params(value: bytes) -> list[tuple[str, str]] | None:
    """(lowercased name, value) pairs, the type first with value "" as get_param() has it;
    None if the value is not of the plain kind."""
    m = _TYPE.match(value)
    if m is None:
        return None
    out = [(m.group(1).decode().lower(), "")]
    pos = m.end()
    while pos < len(value):
        p = _PARAM.match(value, pos)
        if p is None:
            return None
        pos = p.end()
        name, quoted, token = p.groups()
        if name is not None:
            val = quoted if quoted is not None else token or b""
            if len(val) > 1 and val.startswith(b"<") and val.endswith(b">"):
                return None  # email.utils.unquote() strips angle brackets
            out.append((name.decode().lower(), val.decode()))
    return out


def _email_view(fields: list[tuple[bytes, bytes]], default: str) -> tuple[str, str | None,
                                                                          str | None, str]:
    """The email package's reading of these header fields, for values _params() declines."""
    msg = email.message.Message()
    msg.set_default_type(default)
    for name, value in fields:
        msg.set_raw(name.decode(), value.decode("ascii", "surrogateescape"))
    return (msg.get_content_type(), msg.get_boundary(), msg.get_filename(),
            str(msg.get("content-transfer-encoding", "")).lower())


def _view(fields: list[tuple[bytes, bytes]], default: str) -> tuple[str, str | None,
                                                                    str | None, str, bool]:
    """(content type, boundary, filename, transfer encoding, odd) from the Content-* fields
    in order, as email.message.Message reads them (the first of each counts)."""
    cts, cds, ctes = ([v for n, v in fields if n == name] for name in _WANTED)
    ct, cd, cte = (vs[0] if vs else None for vs in (cts, cds, ctes))
    ctp = [] if ct is None else _params(ct)
    cdp = [] if cd is None else _params(cd)
    boundaries = [v for n, v in ctp or () if n == "boundary"]
    # clamd may read another Content-Type (or -Transfer-Encoding, or boundary) than the first,
    # an unusual type, an empty encoding or a boundary with trailing blanks differently.
    odd = (len(cts) > 1 or len(ctes) > 1 or ctp is None or cte == b"" or len(boundaries) > 1
           or any(b != b.rstrip() for b in boundaries)
           or (ct is not None and not _MIME_TYPE.fullmatch(ctp[0][0])))
    if ctp is None or cdp is None or (cte is not None and not cte.isascii()):
        return (*_email_view(fields, default), odd)
    ctype = default if ct is None else ctp[0][0] if ctp[0][0].count("/") == 1 else "text/plain"
    boundary = boundaries[0].rstrip() if boundaries else None
    names = [v for n, v in cdp if n == "filename"] or [v for n, v in ctp if n == "name"]
    return (ctype, boundary, names[0].strip() if names else None,
            "" if cte is None else cte.decode().lower(), odd)


# -- decoding ------------------------------------------------------------------------------

_BAD_QP = re.compile(rb"=(?![0-9A-Fa-f]{2}|\r?\n|\Z)")


def _b64_lenient(joined: bytes) -> bytes:
    """email._encoded_words.decode_b: what the email package makes of broken base64."""
    pad = len(joined) % 4
    for data, strict in ((joined + b"==="[:4 - pad] if pad else joined, True),
                         (joined, False), (joined + b"==", False)):
        try:
            return binascii.a2b_base64(data, strict_mode=strict)
        except binascii.Error:
            pass
    return joined


def _b64(raw: bytes) -> tuple[bytes, bool]:
    """The payload as the email package decodes it, and whether the text was clean base64
    (alphabet, line breaks, blanks, final padding): then every decoder agrees on it."""
    joined = _drop(raw, b"\r\n")
    # Strict base64 has padding only at the very end: with none before the last two bytes,
    # slices of CHUNK (a multiple of 4) decode strictly exactly when the whole does.
    if len(joined) % 4 == 0 and joined.find(b"=", 0, len(joined) - 2) < 0:
        try:
            return b"".join(binascii.a2b_base64(joined[i:i + CHUNK], strict_mode=True)
                            for i in range(0, len(joined), CHUNK)), True
        except binascii.Error:
            pass
    payload = _b64_lenient(joined)
    stripped = joined.translate(None, b" \t")
    try:
        ok = (stripped != joined and len(stripped) % 4 == 0
              and binascii.a2b_base64(stripped, strict_mode=True) == payload)
    except binascii.Error:
        ok = False
    return payload, ok


def _uudecode(raw: bytes, cte: str) -> bytes:
    part = email.message.Message()
    part["Content-Transfer-Encoding"] = cte
    part.set_payload(raw.decode("ascii", "surrogateescape"))
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


_DASH_LINE = re.compile(rb"^[ \t]*[-(][^\r\n]*", re.MULTILINE)


# -- the splitter --------------------------------------------------------------------------

_DELIM_TAIL = re.compile(rb"(--)?([ \t]*)(?:\r?\n|\Z)")


class _Fallback(Exception):
    """Structure _Splitter does not model: the email package decides, nobody trusts it."""


class TooComplex(Exception):
    """The split would take more than its budget of steps: do it off the event loop."""


class _Delimiter(NamedTuple):
    start: int
    stop: int  # after its line ending
    close: bool


def _eol_start(data: bytes, at: int, floor: int) -> int:
    """Where the line ending before the line at `at` starts: it belongs to the boundary."""
    return at - 2 if at - 2 >= floor and data[at - 2] == 13 else at - 1


class _Splitter:
    """Splits one message in place (offsets into it, no copies until a leaf is made), the way
    email.feedparser does. The caller has made sure there is no bare CR in it."""

    def __init__(self, data: bytes, budget: int | None = None) -> None:
        self.data = data
        self.leaves: list[Leaf] = []
        self.spans: list[tuple[int, int]] = []  # where each leaf's raw text lies
        self.trustworthy = True
        self.full = False
        self.overflow: list[tuple[str, str]] = []
        self.budget = budget  # steps left (see INLINE_STEPS), None: no limit

    def step(self, n: int = 1) -> None:
        """Count `n` steps of Python work; TooComplex once the budget is spent."""
        if self.budget is not None:
            self.budget -= n
            if self.budget < 0:
                raise TooComplex

    def entity(self, start: int, end: int, default: str, depth: int,
               bounds: tuple[bytes, ...]) -> None:
        """A message or body part in data[start:end]; `bounds`: the enclosing boundaries."""
        head = self.head(start, end, default)
        if head.odd:
            self.trustworthy = False
        major = head.ctype.partition("/")[0]
        if major in ("multipart", "message") and depth >= MAX_DEPTH:
            self.trustworthy = False
            self.leaf(head, end, bounds)
        elif major == "multipart":
            self.multipart(head, end, depth, bounds)
        elif major == "message" and head.ctype != "message/delivery-status":
            # The email package would split a delivery-status into header blocks and keep
            # none of their bytes; here it is one leaf.
            if head.cte not in IDENTITY:
                self.trustworthy = False  # an encoded message/*: clamd may decode it
            self.entity(head.body, end, "text/plain", depth + 1, bounds)
        else:
            self.leaf(head, end, bounds)

    def head(self, start: int, end: int, default: str) -> _Head:
        """The header block at `start`: feedparser's rules for where it ends."""
        data = self.data
        fields: list[tuple[bytes, int, int]] = []  # Content-* fields: name, value span
        field = wanted = odd = False  # in a field; in one of `fields`; something odd seen
        body = end
        pos = start
        while pos < end:
            self.step()
            nl = data.find(b"\n", pos, end)
            stop = end if nl < 0 else nl + 1
            first = data[pos]
            if first in b"\r\n":  # the blank line
                body = stop
                break
            if first in b" \t":
                if not field:
                    odd = True  # continues nothing: the email package drops it
                elif wanted:
                    name, value_start, _ = fields[-1]
                    fields[-1] = (name, value_start, stop)
            elif m := _FIELD.match(data, pos, stop):
                name = data[pos:m.end() - 1].lower()
                field, wanted = True, name in _WANTED
                if wanted:
                    fields.append((name, m.end(), stop))
            elif data.startswith(b"From ", pos):
                raise _Fallback("From_ line in a header block")
            elif first == 58:  # ":" with no name: dropped, and what continues it
                odd = True
                field = wanted = False
            else:  # no blank line before the body
                odd = True
                body = pos
                break
            pos = stop
        values = [(name, data[a:b].lstrip(b" \t").rstrip(b"\r\n")) for name, a, b in fields]
        ctype, boundary, filename, cte, odd_fields = _view(values, default)
        odd = odd or odd_fields or b"\0" in data[start:body]
        return _Head(body, ctype, boundary, filename, cte, odd)

    def multipart(self, head: _Head, end: int, depth: int, bounds: tuple[bytes, ...]) -> None:
        data = self.data
        if head.boundary is None:  # the email package: one leaf, multipart or not
            self.trustworthy = False
            self.leaf(head, end, bounds)
            return
        boundary = head.boundary.encode("ascii", "surrogateescape")
        if not boundary:
            raise _Fallback("empty boundary")
        low = boundary.lower()
        if (head.cte not in IDENTITY or not _BCHARS.fullmatch(boundary)
                or any(low in b or b in low for b in bounds)):
            self.trustworthy = False
        inner = (*bounds, low)
        found = self.delimiters(b"--" + boundary, head.body, end)
        first = next(found, None)
        if first is None or first.close:  # no parts at all
            self.trustworthy = False
            self.leaf(head, end, bounds)
            return
        if first.start > head.body:
            self.extra(head.body, _eol_start(data, first.start, head.body), inner)
        default = "message/rfc822" if head.ctype == "multipart/digest" else "text/plain"
        prev = first
        while True:  # past MAX_LEAVES too: overflow parts are still named
            nxt = next(found, None)
            if nxt is None:  # no closing boundary: the part runs to the end
                self.trustworthy = False
                stop = end
                if end > prev.stop and data[end - 1] == 10:
                    stop = _eol_start(data, end, prev.stop)
                self.entity(prev.stop, stop, default, depth + 1, inner)
                return
            if nxt.start == prev.stop:
                raise _Fallback("two boundary lines in a row")
            self.entity(prev.stop, _eol_start(data, nxt.start, prev.stop), default, depth + 1,
                        inner)
            if nxt.close:
                self.extra(nxt.stop, end, inner)
                return
            prev = nxt

    def delimiters(self, delim: bytes, start: int, end: int) -> Iterator[_Delimiter]:
        """Boundary lines in data[start:end]: `delim` at a line start, then maybe "--",
        blanks, the line ending. A line that starts with `delim` but is no boundary line
        makes the message untrustworthy (clamd's test is looser)."""
        data = self.data
        needle = b"\n" + delim
        # A body starts a line, after the "\n" at start - 1 (never at 0: headers come first).
        i = data.find(needle, max(start - 1, 0), end)
        while i >= 0:
            self.step()
            at = i + 1
            m = _DELIM_TAIL.match(data, at + len(delim), end)
            if m is None or m.group(2):
                self.trustworthy = False
            if m is not None:
                yield _Delimiter(at, m.end(), m.group(1) is not None)
            i = data.find(needle, at, end)

    def room(self) -> bool:
        """Whether another leaf fits; past MAX_LEAVES the rest is not looked at."""
        if len(self.leaves) >= MAX_LEAVES:
            self.trustworthy = False
            self.full = True
        return not self.full

    def leaf(self, head: _Head, end: int, bounds: tuple[bytes, ...]) -> None:
        if not self.room():
            if head.filename is not None or head.ctype.partition("/")[0] == "application":
                self.overflow.append((head.filename or "", head.ctype))
            return
        self.step()
        raw = self.data[head.body:end]
        cte = head.cte
        plain = True  # raw text lines, which clamd reads for boundaries too
        if cte in IDENTITY:
            payload = raw
        elif cte == "base64":
            payload, ok = _b64(raw)
            plain = False  # clean base64 holds no "-" or "(": no boundary look-alikes
            self.trustworthy = self.trustworthy and ok
        elif cte == "quoted-printable":
            payload = binascii.a2b_qp(raw)
            if _BAD_QP.search(raw):  # decoders differ on broken escapes
                self.trustworthy = False
        elif cte in UUENCODE:
            # Text outside begin...end is dropped by the decoder, so it is in no key.
            payload = _uudecode(raw, cte)
            self.trustworthy = False
        else:
            payload = raw  # what the email package does with an unknown encoding
            self.trustworthy = False
        if plain and self.trustworthy and self.near_miss(raw, bounds):
            self.trustworthy = False
        self.leaves.append(Leaf(digest(payload), payload, head.ctype, head.filename,
                                sniff(payload[:SNIFF_BYTES])))
        self.spans.append((head.body, end))

    def near_miss(self, text: bytes, bounds: tuple[bytes, ...]) -> bool:
        """Whether a line of `text` might be a boundary (lowercased in `bounds`) to clamd,
        which also takes boundary lines with extra dashes, comments or another letter
        case. Each such line is a step."""
        if not bounds:
            return False
        low = text.lower()
        if not any(b in low for b in bounds):
            return False
        for m in _DASH_LINE.finditer(low):
            self.step()
            if any(b in m.group() for b in bounds):
                return True
        return False

    def extra(self, start: int, end: int, bounds: tuple[bytes, ...]) -> None:
        """A multipart's preamble or epilogue: a leaf unless blank."""
        text = self.data[start:end]
        if not text or text.isspace() or not self.room():
            return
        if self.trustworthy and self.near_miss(text, bounds):
            self.trustworthy = False
        self.leaves.append(Leaf(digest(text), text, "text/plain", None))
        self.spans.append((start, end))

    def skeleton(self) -> bytes:
        """The message less the leaves' raw text (spans come in order, never overlap)."""
        pieces, pos = [], 0
        for start, end in self.spans:
            pieces.append(self.data[pos:start])
            pos = end
        pieces.append(self.data[pos:])
        return b"".join(pieces)


def split_parts(message: bytes, budget: int | None = None) -> Parts:
    """The leaves of `message` and its body digest; see the module docstring. With a
    `budget` (in steps, see INLINE_STEPS) TooComplex is raised once it is spent, or when
    the email package would spend it."""
    body, bare_cr = _body_digest(message)
    splitter = _Splitter(message, budget)
    if not bare_cr:  # a bare CR is a line break to the email package: leave it to it
        try:
            splitter.entity(0, len(message), "text/plain", 0, ())
        except _Fallback:
            pass
        else:
            return Parts(tuple(splitter.leaves), body, splitter.trustworthy,
                         splitter.skeleton(), _archives(splitter.leaves, splitter),
                         tuple(splitter.overflow))
    splitter.step(EMAIL_LINE_STEPS * (message.count(b"\n") + 1))
    leaves, _ = _email_leaves(message)
    # No offsets from the email package: all that is known to lie outside its leaves is the
    # header block (and these parts are never trusted to answer "clean").
    return Parts(leaves, body, False, message[:head_end(message)], _archives(leaves, splitter))


def _archives(leaves: list[Leaf] | tuple[Leaf, ...],
              splitter: _Splitter | None = None) -> tuple[ZipSummary, ...]:
    """The zip leaves' directories and the tar and gzip leaves' members (filters/tarball.py);
    each is charged to the `splitter`'s budget first (one C count), so a zip of thousands of
    entries, or any gzip, is read in the offload child."""
    tars: dict[int, bytes] = {}  # leaf index -> its tar or inflated gzip
    inline = splitter is not None and splitter.budget is not None
    for n, leaf in enumerate(leaves):
        if leaf.payload.startswith(ZIP_MAGIC):
            if splitter is not None:
                splitter.step(ZIP_ENTRY_STEPS * leaf.payload.count(CENTRAL_MAGIC))
            continue
        inner = opened(leaf.payload, INLINE_INFLATE if inline else TAR_MAX_BYTES)
        if inner is None:
            continue
        tars[n] = inner
        if splitter is not None:  # a gzip that fills the inline limit goes to the child
            splitter.step(INLINE_STEPS + 1 if inline and len(inner) >= INLINE_INFLATE
                          else TAR_ENTRY_STEPS * headers_at_most(inner))
    return tuple(s for n, leaf in enumerate(leaves)
                 if (s := zip_summary(leaf.payload) if n not in tars
                     else tar_summary(leaf.payload, leaf.filename, tars[n])) is not None)


def split_digests(message: bytes) -> Parts:
    """`split_parts` without the payloads (empty): what crosses a process boundary for a
    big message. Its leaves can be looked up and cached, not scanned one by one."""
    parts = split_parts(message)
    return Parts(tuple(Leaf(leaf.digest, b"", leaf.content_type, leaf.filename, leaf.kind)
                       for leaf in parts.leaves), parts.body_digest, parts.trustworthy,
                 parts.skeleton, parts.archives, parts.overflow)


# -- the email package's view --------------------------------------------------------------

class _Full(Exception):
    pass


def _email_leaves(message: bytes) -> tuple[tuple[Leaf, ...], bool]:
    msg = email.message_from_bytes(message, policy=email.policy.compat32)
    leaves: list[Leaf] = []
    trust = True

    def room() -> None:
        nonlocal trust
        if len(leaves) >= MAX_LEAVES:
            trust = False
            raise _Full

    def extra(text: str | None) -> None:
        data = (text or "").encode("ascii", "surrogateescape")
        if data and not data.isspace():
            room()
            leaves.append(Leaf(digest(data), data, "text/plain", None))

    def visit(part: email.message.Message) -> None:
        nonlocal trust
        if part.defects:
            trust = False
        if part.is_multipart():
            extra(part.preamble)
            for sub in part.get_payload():
                visit(sub)
            extra(part.epilogue)
            return
        room()
        payload = part.get_payload(decode=True)
        if part.defects:  # found while decoding: broken base64
            trust = False
        if not isinstance(payload, bytes):
            payload = b""
        leaves.append(Leaf(digest(payload), payload, part.get_content_type(),
                           part.get_filename(), sniff(payload[:SNIFF_BYTES])))

    try:
        visit(msg)
    except _Full:
        pass
    except RecursionError:  # nested deeper than the email package copes with
        return (), False
    return tuple(leaves), trust


def _split_parts_email(message: bytes) -> Parts:
    """The email package's parts (plus preamble and epilogue leaves): what split_parts falls
    back on, and the reference tests/test_mime.py holds _Splitter to."""
    leaves, trust = _email_leaves(message)
    return Parts(leaves, body_digest(message), trust, message[:head_end(message)],
                 _archives(leaves))
