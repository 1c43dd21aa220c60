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

Only the outer directory is read: a zip inside a zip is clamd's to open (and its
MaxRecursion / MaxScanSize alerts do fire for nested archives).
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


@dataclass(frozen=True, slots=True)
class ZipSummary:
    """The declared contents of one zip, or why they could not be read (`error`)."""

    members: int = 0
    total: int = 0  # declared uncompressed bytes, every member
    largest: tuple[str, int] = ("", 0)  # (name, declared size)
    # the member with the highest size/compressed ratio among those over BOMB_MIN_SIZE
    densest: tuple[str, int, int] | None = None  # (name, size, compressed)
    error: str | None = None


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
        densest=(_name(densest), densest.file_size, densest.compress_size) if densest else None)


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
