"""What a tar, tar.gz or lone gzip attachment holds, for the attachment policy: the members'
names, and for the first PEEK_MEMBERS regular files what their first bytes say they are.

Why only these: the standard library reads tar and gzip with no native code of ours; rar and
7z need libraries this relay does not carry (clamd opens those when it scans). A tar.gz is
one deflate stream over the whole tar, so listing it means inflating it: at most MAX_BYTES
are inflated (a gzip bomb stops there; what lies beyond is not listed), and at most
MAX_MEMBERS headers are read, so a tar of thousands of empty members costs a bounded few
milliseconds. Nothing is extracted: names are judged as written, `../../x.exe` and
`/etc/x.exe` by their last component like any other, and links by their own name.

Recognised by content, never by name: a tar by its ustar magic at offset 257, a gzip by its
two magic bytes. The summary carries entries only (no sizes): clamd's limits are judged from
zip directories alone (filters/archive.py), a tar's are clamd's own.
"""

from __future__ import annotations

import io
import tarfile
import zlib

from filters.archive import PEEK_MEMBERS, SNIFF_BYTES, ZipSummary, sniff

GZIP_MAGIC = b"\x1f\x8b"
TAR_MAGIC_AT = 257  # "ustar" (POSIX and GNU both)
MAX_BYTES = 4 << 20  # inflated at most, per gzip attachment
MAX_MEMBERS = 2_000  # tar headers read at most (about 40 us each: 75 ms for 2,000)
HEADER = 512


def is_tar(data: bytes) -> bool:
    return data[TAR_MAGIC_AT:TAR_MAGIC_AT + 5] == b"ustar"


def inflated(data: bytes, limit: int = MAX_BYTES) -> bytes | None:
    """The first `limit` bytes a gzip stream inflates to, None when it is not readable."""
    try:
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(data, limit)
    except zlib.error:
        return None


def gzip_name(data: bytes) -> str:
    """The original file name in a gzip header (FNAME, RFC 1952 2.3.1), or ""."""
    if len(data) < 10 or not data[3] & 0x08:
        return ""
    at = 10
    if data[3] & 0x04:  # FEXTRA first
        if len(data) < 12:
            return ""
        at += 2 + int.from_bytes(data[10:12], "little")
    end = data.find(b"\0", at, at + 1024)
    return data[at:end].decode("latin-1") if end > at else ""


def tar_entries(data: bytes, prefix: str = "") -> list[tuple[str, str]]:
    """(path, kind) of the tar's members as far as they can be read (a truncated or broken
    tar lists what came before the break)."""
    out: list[tuple[str, str]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            peeked = 0
            while len(out) < MAX_MEMBERS:
                member = tar.next()
                if member is None:
                    break
                kind = ""
                if member.isfile() and member.size and peeked < PEEK_MEMBERS:
                    peeked += 1
                    f = tar.extractfile(member)
                    kind = sniff(f.read(SNIFF_BYTES)) if f is not None else ""
                out.append((prefix + member.name, kind))
    except Exception:  # hostile or truncated input: what was listed stands
        pass
    return out


def opened(data: bytes, limit: int = MAX_BYTES) -> bytes | None:
    """The bytes to list: a tar as it is, a gzip inflated (to `limit`), None if neither."""
    if is_tar(data):
        return data
    if data.startswith(GZIP_MAGIC):
        return inflated(data, limit) or b""
    return None


def headers_at_most(inner: bytes) -> int:
    """An upper bound on the tar headers `tar_entries` would read (each carries the ustar
    magic): one C count, for the MIME splitter's budget."""
    return min(MAX_MEMBERS, inner.count(b"ustar")) if is_tar(inner) else 1


def tar_summary(data: bytes, filename: str | None = None,
                inner: bytes | None = None) -> ZipSummary | None:
    """The entries of a tar, a gzipped tar, or a lone gzipped file (its name from the gzip
    header, else the attachment's name less `.gz`); None if `data` is none of these.
    `inner`: `opened(data)`, when the caller has it already."""
    if inner is None:
        inner = opened(data)
    if inner is None:
        return None
    if is_tar(inner):
        entries = tar_entries(inner)
        return ZipSummary(members=len(entries), entries=tuple(entries))
    if not inner:  # a gzip that does not inflate
        return ZipSummary()
    name = gzip_name(data)
    if not name and filename and filename.lower().endswith((".gz", ".gzip")):
        name = filename.rpartition(".")[0]
    return ZipSummary(members=1, entries=((name, sniff(inner[:SNIFF_BYTES])),))
