"""What a zip attachment says it holds, read from its central directory: no decompression.

Why: clamd (1.4.6) cuts a zip member bigger than its MaxFileSize at MaxFileSize, scans that
much and answers OK even with `AlertExceedsMax yes`, so a 1 MB zip holding one 1 GB member of
zeros is "clean". The directory declares every member's size for a few bytes each; reading it
costs microseconds per member, and what it declares past clamd's limits is refused as
"limits exceeded", like what clamd itself reports.

Hostile directories: a zip is recognised by its content (`PK\\x03\\x04` at offset 0, not its
name). At most MAX_MEMBERS entries are parsed (bounded before zipfile parses any, by counting
the central directory signature, one C call). Every member's local header must be where the
directory says and its data inside the zip, and no two members may share bytes: overlapping
members are David Fifield's "better zip bomb" (2019), 42 KB unpacking to 5.5 GB, which no
archiver writes. A zip whose directory cannot be read, or does not add up, is reported as
unreadable: nothing then bounds what it holds, and the recipient's unzip could not open it
either (the caller refuses it like a zip past the limits).

The sizes are checked on the outer directory only: a zip inside a zip is clamd's to open
(and its MaxRecursion / MaxScanSize alerts do fire for nested archives). For the attachment
policy (filters/attachments.py) the summary also lists what the zip holds, `entries`: every
member's name, and for the first PEEK_MEMBERS members what their first bytes say they are
(`sniff`); a member that is itself a small zip is opened and listed too, to NESTING_LIMIT
levels (a deeper one is listed as "too_deep": no mail nests archives that far but a bomb).
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass

ZIP_MAGIC = b"PK\x03\x04"
CENTRAL_MAGIC = b"PK\x01\x02"
# clamd's MaxFiles default: it stops there itself, and this bounds our parse (~30 ms).
MAX_MEMBERS = 10_000
# A member over BOMB_MIN_SIZE that claims more than BOMB_RATIO times its compressed size is a
# bomb even within clamd's limits (Apache POI's ZipSecureFile refuses ratios over 100 too):
# text and documents deflate 3-20:1, only runs of one byte approach deflate's 1032:1.
BOMB_RATIO = 100
BOMB_MIN_SIZE = 10 << 20
_LOCAL_HEADER = 30
_NAME_SHOWN = 80
# Attachment policy: members whose first bytes are read (each a small decompression), how
# deep zips inside zips are opened, and the largest inner zip opened (declared, decompressed;
# within BOMB_RATIO of its compressed size).
PEEK_MEMBERS = 32
NESTING_LIMIT = 4
NESTED_MAX_SIZE = 4 << 20

# Content that runs by itself wherever its name says otherwise: ELF, Mach-O (and Java class
# files, which share 0xCAFEBABE with fat Mach-O); and DOS/PE, "MZ" with a NUL in its 64-byte
# header (text that happens to start with "MZ" has none).
SNIFF_BYTES = 64
_EXECUTABLE = (b"\x7fELF", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf",
               b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")


def sniff(head: bytes) -> str:
    """What the first SNIFF_BYTES of a file say it is: "exe", "zip" or ""."""
    if head.startswith(_EXECUTABLE) or (head.startswith(b"MZ") and b"\0" in head):
        return "exe"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    return ""


@dataclass(frozen=True, slots=True)
class ZipSummary:
    """The declared contents of one zip, or why they could not be read (`error`)."""

    members: int = 0
    total: int = 0  # declared uncompressed bytes, every member
    largest: tuple[str, int] = ("", 0)  # (name, declared size)
    # the member with the highest size/compressed ratio among those over BOMB_MIN_SIZE
    densest: tuple[str, int, int] | None = None  # (name, size, compressed)
    error: str | None = None
    # (path, kind): every member, inner zips' members as "outer.zip/inner.exe"; kind is
    # sniff()'s for peeked members, "too_deep" for a zip past NESTING_LIMIT, else ""
    entries: tuple[tuple[str, str], ...] = ()


def zip_summary(data: bytes) -> ZipSummary | None:
    """The summary of `data` if it is a zip (by its magic), None if it is not one."""
    if not data.startswith(ZIP_MAGIC):
        return None
    if data.count(CENTRAL_MAGIC) > MAX_MEMBERS:
        return ZipSummary(error=f"more than {MAX_MEMBERS:,} members")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
    except Exception as e:  # hostile input: whatever zipfile trips on, the zip is unreadable
        return ZipSummary(error=f"{type(e).__name__}: {e}"[:200])
    problem = _layout(data, infos)
    if problem is not None:
        return ZipSummary(members=len(infos), error=problem)
    largest = max(infos, key=lambda i: i.file_size, default=None)
    dense = [i for i in infos if i.file_size > BOMB_MIN_SIZE
             and i.file_size > BOMB_RATIO * max(i.compress_size, 1)]
    densest = max(dense, key=lambda i: i.file_size / max(i.compress_size, 1), default=None)
    return ZipSummary(
        members=len(infos), total=sum(i.file_size for i in infos),
        largest=(_name(largest), largest.file_size) if largest else ("", 0),
        densest=(_name(densest), densest.file_size, densest.compress_size) if densest else None,
        entries=tuple(_entries(data, infos, 1, "", [MAX_MEMBERS])))


def _entries(data: bytes, infos: list[zipfile.ZipInfo], depth: int, prefix: str,
             left: list[int]) -> list[tuple[str, str]]:
    """(path, kind) of every member, inner zips opened (see the module docstring); `left`
    bounds the entries listed across all levels."""
    out: list[tuple[str, str]] = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for n, info in enumerate(infos):
            if left[0] <= 0:
                break
            left[0] -= 1
            path = prefix + info.filename
            kind = ""
            if n < PEEK_MEMBERS and info.file_size and not info.flag_bits & 1:
                try:
                    with z.open(info) as member:
                        kind = sniff(member.read(SNIFF_BYTES))
                except Exception:  # hostile member: its name is still judged
                    kind = ""
            out.append((path, kind))
            if kind != "zip":
                continue
            if depth >= NESTING_LIMIT:
                out[-1] = (path, "too_deep")
                continue
            if (info.file_size > NESTED_MAX_SIZE
                    or info.file_size > BOMB_RATIO * max(info.compress_size, 1)):
                continue  # too big to open here: clamd's limits apply to it
            try:
                inner = z.read(info)
                with zipfile.ZipFile(io.BytesIO(inner)) as iz:
                    inner_infos = iz.infolist()
            except Exception:
                continue
            if _layout(inner, inner_infos) is None:
                out.extend(_entries(inner, inner_infos, depth + 1, path + "/", left))
    return out


def _name(info: zipfile.ZipInfo) -> str:
    return info.filename[:_NAME_SHOWN]


def _layout(data: bytes, infos: list[zipfile.ZipInfo]) -> str | None:
    """Why the members' data is not where the directory says, or overlaps; None if sound."""
    end_prev, name_prev = 0, ""
    for info in sorted(infos, key=lambda i: i.header_offset):
        at = info.header_offset
        if at < 0 or data[at:at + 4] != ZIP_MAGIC or at + _LOCAL_HEADER > len(data):
            return f"member {_name(info)!r}: no local header at offset {at:,}"
        if at < end_prev:
            return f"members {name_prev!r} and {_name(info)!r} overlap"
        name_len, extra_len = struct.unpack_from("<HH", data, at + 26)
        end = at + _LOCAL_HEADER + name_len + extra_len + info.compress_size
        if end > len(data):
            return f"member {_name(info)!r}: data past the end of the zip"
        end_prev, name_prev = end, _name(info)
    return None


def zip_excess(summary: ZipSummary, max_file_size: int, max_scan_size: int) -> str | None:
    """Why clamd could not look at this zip in full (its limits: 0 = none), None if it can."""
    if summary.error is not None:
        return f"zip directory unreadable: {summary.error}"
    name, size = summary.largest
    if max_file_size and size > max_file_size:
        return f"zip member {name} {size:,} bytes > max_file_size {max_file_size:,}"
    if max_scan_size and summary.total > max_scan_size:
        return (f"zip members {summary.total:,} bytes in all > max_scan_size "
                f"{max_scan_size:,}")
    if summary.densest is not None:
        name, size, packed = summary.densest
        return (f"zip member {name} {size:,} bytes from {packed:,}: ratio over "
                f"{BOMB_RATIO}:1 (zip bomb)")
    return None
