"""Attachment policy: refuse executables by name, by declared type and by content, inside zips
too, before any scanner is asked (amavisd-new's banned_files, Postfix's mime_header_checks).

Why before clamd: a worm outbreak is thousands of copies of one executable attachment; a
name and a few bytes decide it without a scan, and with clamd down it is still refused.

What is judged, for every MIME part (filters/mime.py) and every member of a zip attachment
(filters/archive.py, inner zips opened a few levels deep), of a tar or tar.gz and of a lone
gzip (filters/tarball.py):
- the file name's last extension, after decoding what hides it: RFC 2047 encoded words
  (`=?UTF-8?B?...?=`; RFC 2231 `filename*=` is decoded by the MIME parser), Unicode
  compatibility forms (NFKC), and trailing dots and blanks (`evil.exe.`, which Windows
  drops). A name carrying a bidirectional override or isolate (U+202E "invoice\u202egnp.exe"
  shows as "invoiceexe.png") is refused whatever its extension: no honest name needs one;
- the declared content type (application/x-msdownload ...);
- what the content's first bytes are (MZ, ELF, Mach-O) whatever the name says.
A zip nested past filters.archive.NESTING_LIMIT is refused too: no mail nests archives so
deep, only bombs do. Parts past the MIME parser's MAX_LEAVES are judged by name and type.
"""

from __future__ import annotations

import email.header
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from filters.base import Context, Stage, Verdict
from filters.failure import FailurePolicy
from filters.mime import INLINE_STEPS, Parts, TooComplex, split_parts
from filters.offload import split_in_process, split_parts_in_process

# amavisd-new's banned_filename_re and Postfix's sample mime_header_checks, merged.
BANNED_EXTENSIONS = (
    "ade", "adp", "app", "bas", "bat", "chm", "cmd", "com", "cpl", "dll", "exe", "hlp", "hta",
    "inf", "ins", "isp", "jar", "js", "jse", "lnk", "mda", "mdb", "mde", "mdt", "mdw", "mdz",
    "msc", "msi", "msp", "mst", "ocx", "ops", "pcd", "pif", "prf", "reg", "scf", "scr", "sct",
    "shb", "shs", "sys", "vb", "vbe", "vbs", "vxd", "wsc", "wsf", "wsh", "ps1", "msh",
)
BANNED_TYPES = (
    "application/x-msdownload", "application/x-msdos-program", "application/x-dosexec",
    "application/x-executable", "application/vnd.microsoft.portable-executable",
    "application/x-ms-installer", "application/x-msi", "application/hta",
    "application/x-ms-shortcut",
)
# Larger messages are split in the offload process, digests only (as filters/clamav.py does).
PARSE_INLINE_LIMIT = 1024 * 1024
# Bidirectional embeddings, overrides and isolates (Unicode "Bidi_Control" less the marks).
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

TEXT = "Message refused: attachment type not allowed"
FAILURE = FailurePolicy("attachments", what="attachment check")


def banned_verdict(detail: str) -> Verdict:
    """`554 5.7.1`: this message will never be taken (RFC 3463 X.7.1, refused by policy)."""
    return Verdict.reject(554, "5.7.1", "banned_attachment", TEXT, detail=detail)


def decoded_name(raw: str) -> str:
    """The name a mail client shows: encoded words decoded, NFKC, trailing dots and blanks
    dropped (Windows drops them too), lower case."""
    name = raw
    if "=?" in name:
        try:
            name = str(email.header.make_header(email.header.decode_header(name)))
        except Exception:  # broken encoded word: judge it as written
            name = raw
    name = unicodedata.normalize("NFKC", name)
    return name.rstrip(". \t\r\n\x00").lower()


def _extensions(name: str) -> list[str]:
    """Every extension of the last path component, innermost last: `a.pdf.exe` -> pdf, exe."""
    base = name.replace("\\", "/").rpartition("/")[2]
    return [e.strip() for e in base.split(".")[1:]]


@dataclass(frozen=True, slots=True)
class Policy:
    """The lists one message is judged by (the union over its recipients' domains)."""

    extensions: frozenset[str]
    types: frozenset[str]

    def name_problem(self, raw: str) -> str | None:
        """Why this file name is refused, or None."""
        if any(c in _BIDI for c in raw):
            return f"bidirectional override in file name {raw!r}"
        name = decoded_name(raw)
        if any(c in _BIDI for c in name):
            return f"bidirectional override in file name {name!r}"
        exts = [e for e in _extensions(name) if e]
        if exts and exts[-1] in self.extensions:
            double = " (double extension)" if len(exts) > 1 else ""
            return f"banned file name {name!r}{double}"
        return None

    def judge(self, parts: Parts) -> str | None:
        """Why the message is refused, or None."""
        for filename, ctype, kind in _files(parts):
            where = filename or "(no name)"
            if filename and (why := self.name_problem(filename)) is not None:
                return why
            if ctype in self.types:
                return f"banned content type {ctype} of {where!r}"
            if kind == "exe":
                return f"executable content in {where!r}"
            if kind == "too_deep":
                return f"archive nested too deep at {where!r}"
        return None


def _files(parts: Parts) -> Iterator[tuple[str, str, str]]:
    """(file name, content type, kind) of every part, overflow part and zip member."""
    for leaf in parts.leaves:
        yield leaf.filename or "", leaf.content_type, leaf.kind
    for name, ctype in parts.overflow:
        yield name, ctype, ""
    for summary in parts.archives:
        for path, kind in summary.entries:
            yield path, "", kind


def policy_of(extensions: Iterable[str], types: Iterable[str]) -> Policy:
    return Policy(frozenset(e.lower().lstrip(".") for e in extensions),
                  frozenset(t.lower() for t in types))


async def split(content: bytes) -> Parts:
    """The message's parts, off the event loop when big or complex (filters/offload.py)."""
    if len(content) > PARSE_INLINE_LIMIT:
        return await split_in_process(content)
    try:
        return split_parts(content, INLINE_STEPS)
    except TooComplex:
        return await split_parts_in_process(content)


@dataclass(slots=True)
class AttachmentFilter:
    """DATA check. `policy_for(rcpts)` gives the lists for a message's recipients."""

    policy_for: Callable[[list[str]], Policy]
    name: str = "attachments"
    stage: Stage = Stage.DATA
    timeout: float = 30.0
    on_error: FailurePolicy = field(default=FAILURE)

    async def check(self, ctx: Context) -> Verdict | None:
        policy = self.policy_for(ctx.rcpts)
        if not policy.extensions and not policy.types:
            return None
        why = policy.judge(await split(ctx.content))
        return None if why is None else banned_verdict(why)
