"""Messages that cost a parser much more than their size suggests (issue 16): shared by the
tests and by the stall probe (scripts/benchlib/stall.py). CRLF line ends, not dot-stuffed
(no line starts with a dot)."""

from __future__ import annotations

HEAD = (b"From: <a@sender.test>\r\nTo: <bob@example.org>\r\nSubject: test\r\n"
        b"MIME-Version: 1.0\r\n")


def folded_header(lines: int = 124_000) -> bytes:
    """One header field folded over `lines` lines (124,000: 9.5 MB, as in the issue)."""
    line = b"\tword%07d " + b"x" * 61 + b"\r\n"  # 77 bytes a line
    folds = b"".join(line % i for i in range(lines))
    return HEAD + b"X-Long: start\r\n" + folds + b"\r\nbody\r\n"


def tiny_parts(size: int = 1 << 20) -> bytes:
    """About `size` bytes of one-line parts, with two boundary lines in a row at the top:
    structure _Splitter leaves to the email package, which reads every line in Python
    (640 ms of the event loop for 1 MB)."""
    parts = b"--b\r\n\r\nx\r\n" * (size // 12)
    return (HEAD + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n--b\r\n"
            + parts + b"--b--\r\n")


def many_headers(size: int = 1 << 20) -> bytes:
    """About `size` bytes of short header fields."""
    return HEAD + b"X-A: b\r\n" * (size // 8) + b"\r\nbody\r\n"


def many_part_headers(size: int = 1 << 20) -> bytes:
    """One part whose header block is about `size` bytes of short fields."""
    return (HEAD + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            + b"X-A: b\r\n" * (size // 8) + b"\r\nx\r\n--b--\r\n")
