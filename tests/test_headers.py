"""Header surgery on raw bytes: forged scan headers out, ours in, body untouched."""

from __future__ import annotations

import asyncio
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters import headers as headers_module
from filters.headers import (
    SLICE,
    apply_headers,
    format_header,
    head_end,
    header_names,
    oversized_field,
    oversized_field_async,
    prepend_headers,
    rewrite_head,
    rewrite_head_async,
    split_head,
    strip_headers,
)
from tests.pathological import folded_header
from tests.support import LoopTurns

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


# -- the definitions the fast versions are held to ------------------------------------------

def fields_by_line(head: bytes) -> list[bytes]:
    """A field is a line (CR, LF or CRLF ends one) plus the lines after it that start with a
    blank."""
    fields: list[list[bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return [b"".join(f) for f in fields]


def naive_strip(message: bytes, wanted: tuple[bytes, ...] = (b"x-spam-", b"x-floodgate-")
                ) -> bytes:
    head, rest = split_head(message)
    return b"".join(f for f in fields_by_line(head)
                    if not f.split(b":", 1)[0].strip().lower().startswith(wanted)) + rest


def naive_oversized(head: bytes, limit: int) -> bool:
    """Whether a field (LF-folded) is longer than `limit` without its last line ending."""
    for f in re.findall(rb"[^\n]*(?:\n|\Z)(?:[ \t][^\n]*(?:\n|\Z))*", head):
        size = len(f) - (2 if f.endswith(b"\r\n") else 1 if f.endswith(b"\n") else 0)
        if f and size > limit:
            return True
    return False


HEADS = st.lists(st.sampled_from([b"A: b", b"X-Spam-Flag: NO", b"x-floodgate-a:1", b"X-SPAM-",
                                  b"\r\n", b"\n", b"\r", b" ", b"\t", b"\x0b", b":", b"X-Spamx",
                                  b"\r\n\r\n", b"body"]), max_size=60).map(b"".join)


@given(HEADS, st.sampled_from([7, 20, SLICE]))
@settings(max_examples=1000)
def test_strip_is_the_field_by_field_definition(message: bytes, slice_size: int) -> None:
    """One regex over slices cut where a field starts, sync or giving the loop turns."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(headers_module, "SLICE", slice_size)
        expected = naive_strip(message)
        assert strip_headers(message) == expected
        assert asyncio.run(headers_module.strip_headers_async(message)) == expected
        assert headers_module._fields(split_head(message)[0]) == fields_by_line(
            split_head(message)[0])


@given(HEADS, st.integers(1, 20))
@settings(max_examples=1000)
def test_oversized_field_is_the_definition(message: bytes, limit: int) -> None:
    head = split_head(message)[0]
    found = oversized_field(head, limit)
    assert (found is not None) == naive_oversized(head, limit)
    assert found is None or found > limit
    assert asyncio.run(oversized_field_async(head, limit)) == found


def test_a_header_folded_over_124000_lines() -> None:
    """9.5 MB in one field, as in the issue: over the limit, found without walking its
    lines; and stripped (were it allowed) as a slice, with fields around it in theirs."""
    message = folded_header(124_000)
    head = split_head(message)[0]
    assert len(head) > 9_000_000 and head.count(b"\n") > 124_000
    assert oversized_field(head) > 102_400
    forged = b"X-Spam-Flag: NO\r\n"
    out = strip_headers(forged * 10_000 + message)
    assert out == message


def test_a_big_header_block_is_stripped_a_slice_per_turn_of_the_loop() -> None:
    """200,000 fields, every other one forged: the loop turns between slices, so other
    sessions wait for one slice at most, not for the whole block."""
    message = b"X-Spam-Flag: NO\r\nReceived: from x\r\n" * 100_000 + b"\r\nbody\r\n"

    async def go() -> tuple[tuple[bytes, memoryview], int]:
        turns = LoopTurns().start()
        out = await rewrite_head_async(message, [("X-Spam-Score", "1")])
        return out, turns.stop()

    (head, rest), turns = asyncio.run(go())
    assert head + bytes(rest) == apply_headers(message, [("X-Spam-Score", "1")])
    assert b"X-Spam-Flag" not in head and head.count(b"Received:") == 100_000
    assert turns >= len(message) // SLICE - 1
