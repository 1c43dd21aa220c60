"""Header surgery on raw bytes: forged scan headers out, ours in, body untouched."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from filters.headers import (
    apply_headers,
    format_header,
    head_end,
    header_names,
    prepend_headers,
    rewrite_head,
    split_head,
    strip_headers,
)

MSG = (b"Received: from a\r\n\tby b\r\nX-Spam-Flag: NO\r\nSubject: hi\r\n"
       b"x-spam-status: No,\r\n score=-50\r\nX-Floodgate-Unscanned: forged\r\n"
       b"\r\nX-Spam-Flag: NO in the body stays\r\n\r\nbye\r\n")


def test_split_head_keeps_every_byte() -> None:
    head, rest = split_head(MSG)
    assert head + rest == MSG and rest.startswith(b"\r\nX-Spam-Flag: NO in the body")
    assert split_head(b"A: b\nC: d\n\nbody\n") == (b"A: b\nC: d\n", b"\nbody\n")
    assert split_head(b"\r\nbody") == (b"", b"\r\nbody")
    assert split_head(b"A: b\r\n") == (b"A: b\r\n", b"")


def test_strip_removes_folded_fields_case_insensitively() -> None:
    out = strip_headers(MSG)
    assert header_names(out) == ["Received", "Subject"]
    assert b"score=-50" not in out and b"\tby b\r\n" in out
    assert split_head(out)[1] == split_head(MSG)[1]


def test_prepend_uses_the_message_line_ending() -> None:
    assert prepend_headers(b"A: b\n\nbody\n", [("X-One", "1")]) == b"X-One: 1\nA: b\n\nbody\n"
    assert prepend_headers(MSG, [("X-One", "1")]).startswith(b"X-One: 1\r\nReceived")
    assert prepend_headers(MSG, []) is MSG


def test_header_values_cannot_inject_lines_and_long_ones_fold() -> None:
    assert format_header("X-A", "evil\r\nBcc: x@y") == b"X-A: evil Bcc: x@y\r\n"
    long = format_header("X-Spam-Status", "Yes, " + " ".join(f"word{i}" for i in range(40)))
    lines = long.split(b"\r\n")[:-1]
    assert len(lines) > 1 and all(len(line) <= 76 for line in lines)
    assert all(line.startswith(b"\t") for line in lines[1:])


def test_apply_headers_is_strip_then_prepend() -> None:
    out = apply_headers(MSG, [("X-Spam-Flag", "YES"), ("X-Spam-Score", "7.1")])
    assert header_names(out) == ["X-Spam-Flag", "X-Spam-Score", "Received", "Subject"]
    assert out.endswith(b"\r\n\r\nX-Spam-Flag: NO in the body stays\r\n\r\nbye\r\n")


PIECES = st.lists(st.sampled_from([b"A: b", b"X-Spam-Flag: NO", b"\r\n", b"\n", b"\r", b" ",
                                   b"\r\n\r\n", b"\n\n", b"body"]), max_size=30).map(b"".join)


def naive_head_end(message: bytes) -> int:
    """The definition: the first "\\r\\n\\r\\n" or "\\n\\n", searched over the whole message."""
    if message.startswith((b"\r\n", b"\n")):
        return 0
    found = [i for i in (message.find(b"\r\n\r\n"), message.find(b"\n\n")) if i >= 0]
    if not found:
        return len(message)
    end = min(found)
    return end + (2 if message.startswith(b"\r\n", end) else 1)


@given(PIECES)
@settings(max_examples=500)
def test_head_end_is_the_first_blank_line(message: bytes) -> None:
    assert head_end(message) == naive_head_end(message)


@given(PIECES, st.lists(st.sampled_from([("X-Spam-Flag", "YES"), ("X-Spam-Score", "7.1")]),
                        max_size=2))
@settings(max_examples=500)
def test_rewrite_head_is_apply_headers_without_copying_the_body(
        message: bytes, headers: list[tuple[str, str]]) -> None:
    head, rest = rewrite_head(message, headers)
    expected = prepend_headers(strip_headers(message), headers)
    assert head + bytes(rest) == expected == apply_headers(message, headers)
    assert rest.obj is message  # a view of the received bytes, not a copy
