"""filters/mime.py: the bytes splitter against the email package, and when not to trust it.

The reference is _split_parts_email (the email package's walk, plus preamble and epilogue
leaves); `old_keys` is the walk as it was before those leaves existed.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import io
import re
from email import encoders
from email.generator import BytesGenerator
from email.mime.application import MIMEApplication
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filters.headers import split_head
from filters.mime import (
    INLINE_STEPS,
    MAX_DEPTH,
    MAX_LEAVES,
    Parts,
    TooComplex,
    _email_view,
    _params,
    _split_parts_email,
    body_digest,
    digest,
    split_parts,
)
from tests import pathological
from tests.make_fixtures import EICAR, MESSAGES, TESTFILES, forward, uuencode, with_attachment

Key = tuple[str, str, str | None]
CORPUS = sorted(MESSAGES.glob("*.eml"))
# scripts/setup installs clamav-testfiles: without it collection fails, never a silent skip
TESTFILE_NAMES = sorted(p.name for p in TESTFILES.iterdir())
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def crlf(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def keys(parts: Parts) -> list[Key]:
    return [(leaf.digest, leaf.content_type, leaf.filename) for leaf in parts.leaves]


def agree(message: bytes, defects: bool = False) -> Parts:
    """split_parts() finds the reference's leaves, payloads included; returns its Parts.
    Unless `defects`, what it trusts has no defects in the email package's eyes either."""
    new, ref = split_parts(message), _split_parts_email(message)
    assert new.leaves == ref.leaves
    assert new.body_digest == ref.body_digest
    if new.trustworthy and not defects:
        assert ref.trustworthy
    return new


def old_keys(message: bytes) -> list[Key]:
    """filters/mime.py before the bytes splitter: the email package's walk, no preambles."""
    msg = email.message_from_bytes(message, policy=email.policy.compat32)
    out = []
    for part in msg.walk():
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            out.append((digest(payload if isinstance(payload, bytes) else b""),
                        part.get_content_type(), part.get_filename()))
    return out[:MAX_LEAVES]


def extra_keys(message: bytes) -> set[Key]:
    """Keys of the preamble and epilogue leaves."""
    msg = email.message_from_bytes(message, policy=email.policy.compat32)
    texts = [t for part in msg.walk() for t in (part.preamble, part.epilogue) if t]
    return {(digest(t.encode("ascii", "surrogateescape")), "text/plain", None) for t in texts}


def same_as_before(message: bytes) -> Parts:
    """agree(), and apart from preamble and epilogue leaves the old walk's leaves."""
    parts = agree(message)
    extras = extra_keys(message)
    assert [k for k in keys(parts) if k not in extras] == old_keys(message)
    return parts


# -- the repository's messages and ClamAV's test files ----------------------------------------

@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
@pytest.mark.parametrize("ending", ["lf", "crlf"])
def test_fixture_messages_split_as_before(path: Path, ending: str) -> None:
    raw = path.read_bytes()
    parts = same_as_before(crlf(raw) if ending == "crlf" else raw)
    assert parts.trustworthy == (path.name != "clam-uu.eml")  # uuencode: never trusted


@pytest.mark.parametrize("name", TESTFILE_NAMES)
def test_clamav_test_files_as_attachments(name: str) -> None:
    data = (TESTFILES / name).read_bytes()
    message = crlf(with_attachment("Test file", "See the attachment.", data, name))
    parts = same_as_before(message)
    assert parts.trustworthy
    assert parts.leaves[-1].payload == data and parts.leaves[-1].filename == name
    fwd = same_as_before(crlf(forward("Fwd: test file", message.decode())))
    assert fwd.trustworthy and digest(data) in {leaf.digest for leaf in fwd.leaves}
    if len(data) < 100_000:
        uu = same_as_before(crlf(with_attachment("uu", "uu", data, name, encoding="x-uuencode")))
        assert digest(data) in {leaf.digest for leaf in uu.leaves} and not uu.trustworthy


@pytest.mark.parametrize("name", ["clam.mail", "clam.exe.mbox.base64", "clam.exe.mbox.uu"])
def test_clamav_test_mails(name: str) -> None:
    raw = (TESTFILES / name).read_bytes()
    for message in (raw, crlf(raw)):
        parts = same_as_before(message)
        # The mbox files start with a From_ line: the email package's path, not trusted.
        assert parts.trustworthy == (name == "clam.mail")


# -- random MIME trees ---------------------------------------------------------------------

# Text without "-" or "(": no line of it can look like a boundary to clamd.
TEXT = st.text(st.sampled_from("abcXYZ019 .,:;!?=_'\"\t\n"), max_size=120)
DATA = st.binary(max_size=600).map(lambda b: b.replace(b"-", b"+").replace(b"(", b"+"))
# Quoted-printable keeps line breaks as line breaks, which the generator rewrites.
QP_DATA = DATA.map(lambda b: b.replace(b"\r", b"+").replace(b"\n", b"+"))
FILENAME = st.none() | st.from_regex(r"[A-Za-z0-9_]{1,12}\.(zip|exe|pdf)", fullmatch=True) | (
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1,
            max_size=12))  # non-ASCII, quotes, backslashes: RFC 2231 or escapes
# Boundaries: bchars; "." only as the separator around a unique number, so that no boundary
# holds another.
CHUNK = st.from_regex(r"[A-Za-z0-9'+_,/:=?-]{0,30}", fullmatch=True)
LEAF = st.one_of(
    st.tuples(st.just("base64"), DATA, FILENAME),
    st.tuples(st.just("qp"), QP_DATA, FILENAME),
    st.tuples(st.just("text"), TEXT, st.none()),
)
SUBTYPES = st.sampled_from(["mixed", "alternative", "related", "digest", "report"])


def trees(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return LEAF
    sub = trees(depth - 1)
    return st.one_of(
        LEAF,
        st.tuples(st.just("multi"), SUBTYPES, CHUNK, CHUNK, st.none() | TEXT, st.none() | TEXT,
                  st.lists(sub, min_size=1, max_size=4)),
        st.tuples(st.just("rfc822"), sub),
    )


def build(node: Any, counter: list[int]) -> email.message.Message:
    kind = node[0]
    if kind in ("base64", "qp"):
        _, data, name = node
        part: email.message.Message = MIMEApplication(
            data, _encoder=encoders.encode_base64 if kind == "base64" else encoders.encode_quopri)
        if name is not None:
            part.add_header("Content-Disposition", "attachment", filename=name)
        return part
    if kind == "text":
        return MIMEText(node[1], "plain", "us-ascii")
    if kind == "rfc822":
        inner = build(node[1], counter)
        inner["Subject"] = "forwarded"
        return MIMEMessage(inner)
    _, subtype, left, right, preamble, epilogue, children = node
    counter[0] += 1
    multi = MIMEMultipart(subtype, boundary=f"{left}.{counter[0]:03d}.{right}")
    for child in children:
        if subtype == "digest":  # a digest's parts are messages
            child = ("rfc822", child)
        multi.attach(build(child, counter))
    multi.preamble, multi.epilogue = preamble, epilogue
    return multi


def render(node: Any, linesep: str) -> bytes:
    msg = build(node, [0])
    msg["From"] = "a@example.org"
    msg["Subject"] = "random tree"
    out = io.BytesIO()
    policy = email.policy.compat32.clone(linesep=linesep)
    BytesGenerator(out, mangle_from_=False, policy=policy).flatten(msg)
    return out.getvalue()


def payloads(node: Any) -> list[bytes]:
    kind = node[0]
    if kind in ("base64", "qp"):
        return [node[1]]
    if kind == "multi":
        return [p for child in node[6] for p in payloads(child)]
    return payloads(node[1]) if kind == "rfc822" else []


MESSAGES_ = st.tuples(trees(4), st.sampled_from(["\r\n", "\n"]))


@given(MESSAGES_)
@settings(SLOW, max_examples=300)
def test_random_trees_agree_and_are_trusted(tree_and_sep: tuple[Any, str]) -> None:
    tree, sep = tree_and_sep
    message = render(tree, sep)
    parts = agree(message)
    assert parts.trustworthy
    found = [leaf.payload for leaf in parts.leaves]
    assert all(p in found for p in payloads(tree))


# Lines that change structure when dropped into a message.
MIME_LINES = st.sampled_from([
    b"--", b"Content-Type: multipart/mixed; boundary=b", b"Content-Type: message/rfc822",
    b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Type: text/plain", b"", b" folded", b"QUJD", b"QQ==", b"=41=", b"begin 644 x",
    b"end", b"X-Other: 1", b":", b"\x00", b"\r", b"From x", b"Content-Transfer-Encoding:",
    b'Content-Type: multipart/mixed; boundary="b "', b"Content-Type: Multipart/Mixed; BOUNDARY=b",
    b"Content-Type: multipart/mixed;\r\n boundary=b", b"---b", b"--B",
])


def mutate(message: bytes, data: st.DataObject) -> bytes:
    how = data.draw(st.sampled_from(["truncate", "drop close", "flip", "drop line",
                                     "repeat line", "add line"]))
    if how == "truncate":
        return message[:data.draw(st.integers(0, len(message)))]
    if how in ("drop line", "repeat line", "add line"):
        lines = message.splitlines(keepends=True)
        i = data.draw(st.integers(0, len(lines)))
        if how == "add line":
            new = data.draw(MIME_LINES)
            if data.draw(st.booleans()) and lines:  # a delimiter: reuse or vary one
                new = data.draw(st.sampled_from([ln.rstrip() for ln in lines
                                                 if ln.startswith(b"--")] or [b"--"]))
            return b"".join([*lines[:i], new + b"\r\n", *lines[i:]])
        instead = [] if how == "drop line" else lines[i:i + 1] * 2
        return b"".join([*lines[:i], *instead, *lines[i + 1:]])
    lines = [m for m in re.finditer(rb"(?m)^--[^\r\n]*", message)
             if how == "flip" or m.group().endswith(b"--")]
    if not lines:
        return message
    line = data.draw(st.sampled_from(lines))
    if how == "drop close":
        return message[:line.start()] + message[line.end():]
    at = data.draw(st.integers(line.start(), line.end()))  # the end: its line break
    flipped = message[at] ^ data.draw(st.integers(1, 255))
    return message[:at] + bytes([flipped]) + message[at + 1:]


@given(MESSAGES_, st.data())
@settings(SLOW, max_examples=500)
def test_broken_trees_are_never_trusted_wrongly(tree_and_sep: tuple[Any, str],
                                                data: st.DataObject) -> None:
    message = mutate(render(*tree_and_sep), data)
    new, ref = split_parts(message), _split_parts_email(message)
    if new.trustworthy:  # then exactly the email package's leaves, and no defects
        assert new.leaves == ref.leaves
        assert ref.trustworthy


# -- header parameters -----------------------------------------------------------------------

PARAM_BITS = st.sampled_from([
    "multipart/mixed", "text/plain", "attachment", ";", "; ", " ", "\t", "\r\n ", "boundary",
    "name", "filename", "=", '"', "\\", "*", "*0", "abc", "x.zip", "=_b", "<", ">", "'", "%41",
    "\udce9", "(c)", "Boundary", "a b", "/", "?=",
])


@given(st.lists(PARAM_BITS, max_size=14).map("".join),
       st.lists(PARAM_BITS, max_size=10).map("".join))
@settings(deadline=None, max_examples=1000)
def test_plain_parameters_read_as_the_email_package_reads_them(ct: str, cd: str) -> None:
    raw_ct, raw_cd = (v.encode("ascii", "surrogateescape") for v in (ct, cd))
    ctp, cdp = _params(raw_ct), _params(raw_cd)
    ref = _email_view([(b"content-type", raw_ct), (b"content-disposition", raw_cd)],
                      "text/plain")
    if ctp is not None:
        ctype = ctp[0][0] if ctp[0][0].count("/") == 1 else "text/plain"
        boundary = next((v.rstrip() for n, v in ctp if n == "boundary"), None)
        assert (ctype, boundary) == ref[:2]
    if ctp is not None and cdp is not None:
        names = [v for n, v in cdp if n == "filename"] or [v for n, v in ctp if n == "name"]
        assert (names[0].strip() if names else None) == ref[2]


def test_common_parameters_are_read_natively() -> None:
    for value in [b'multipart/mixed; boundary="----=_Part_1_2.3"', b"text/plain; charset=utf-8",
                  b'application/pdf;\r\n\tname="report (final).pdf"', b"multipart/alternative;"
                  b"\r\n boundary=000000000000b2c1e305f1a1b2c3", b'attachment; filename="a;b.zip"']:
        assert _params(value) is not None, value


# -- the body digest -----------------------------------------------------------------------

@given(st.lists(st.sampled_from([b"A: b", b"\r\n", b"\n", b"\r", b"x", b" ", b"\r\n\r\n"]),
                max_size=30).map(b"".join))
@settings(deadline=None, max_examples=500)
def test_body_digest_is_unchanged(message: bytes) -> None:
    _, body = split_head(message)
    assert body_digest(message) == digest(body.replace(b"\r\n", b"\n"))


@given(st.lists(st.sampled_from([b"A: b", b"\r\n", b"\n", b"\r", b"x", b" ", b"\r\n\r\n"]),
                max_size=30).map(b"".join))
@settings(deadline=None, max_examples=300)
def test_body_digest_in_small_slices_is_the_same(message: bytes) -> None:
    import filters.mime as mime

    whole = body_digest(message)
    saved, mime.CHUNK = mime.CHUNK, 4  # big-message slicing, on small messages
    try:
        assert body_digest(message) == whole
    finally:
        mime.CHUNK = saved


@given(st.binary(max_size=64), st.sampled_from([b"", b"\r\n", b" ", b"="]),
       st.integers(0, 80))
@settings(deadline=None, max_examples=500)
def test_base64_decoded_in_slices_as_a_whole(payload: bytes, junk: bytes, at: int) -> None:
    """Slices of CHUNK decode to what one decode of the whole gives, clean or not."""
    import filters.mime as mime

    text = base64.encodebytes(payload)
    text = text[:at] + junk + text[at:]
    whole = mime._b64(text)
    saved, mime.CHUNK = mime.CHUNK, 8
    try:
        assert mime._b64(text) == whole
    finally:
        mime.CHUNK = saved


def test_padding_inside_is_not_clean_even_at_a_slice_edge() -> None:
    """`QQ==` ends a slice cleanly, but padding inside the whole text is not base64."""
    import filters.mime as mime

    text = b"QQ==QUJD\r\n"
    whole = mime._b64(text)
    saved, mime.CHUNK = mime.CHUNK, 4
    try:
        assert mime._b64(text) == whole and whole[1] is False
    finally:
        mime.CHUNK = saved


# -- specific cases ------------------------------------------------------------------------

def multipart(*parts: str, boundary: str = "b1", preamble: str = "", epilogue: str = "",
              close: bool = True, head: str = "") -> bytes:
    body = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts)
    return crlf(f'Subject: t\r\n{head}Content-Type: multipart/mixed; boundary="{boundary}"\r\n'
                f"\r\n{preamble}{body}" + (f"--{boundary}--\r\n{epilogue}" if close else ""))


TEXT_PART = "Content-Type: text/plain\r\n\r\nhello"
ZIP_PART = ("Content-Type: application/zip; name=a.zip\r\nContent-Transfer-Encoding: base64"
            "\r\n\r\n" + base64.encodebytes(b"PK\x03\x04 not really a zip" * 5).decode())


def test_a_well_formed_message_is_trusted() -> None:
    parts = agree(multipart(TEXT_PART, ZIP_PART))
    assert parts.trustworthy and [leaf.content_type for leaf in parts.leaves] == [
        "text/plain", "application/zip"]


def test_preamble_and_epilogue_text_are_leaves() -> None:
    plain = multipart(TEXT_PART, ZIP_PART)
    parts = agree(multipart(TEXT_PART, ZIP_PART, preamble="This is MIME.\r\n",
                            epilogue="bye\r\n"))
    assert parts.trustworthy and len(parts.leaves) == 4
    assert (parts.leaves[0].payload, parts.leaves[0].content_type, parts.leaves[0].filename) == (
        b"This is MIME.", "text/plain", None)
    assert parts.leaves[-1].payload == b"bye\r\n"
    assert keys(agree(multipart(TEXT_PART, ZIP_PART, preamble="\r\n \r\n"))) == keys(
        split_parts(plain))  # blank: nothing to key


def test_a_virus_in_the_preamble_changes_the_keys() -> None:
    clean = agree(multipart(TEXT_PART, ZIP_PART, preamble="Hello\r\n"))
    hidden = uuencode(EICAR, "eicar.com").replace("\n", "\r\n") + "\r\n"
    infected = agree(multipart(TEXT_PART, ZIP_PART, preamble=hidden))
    assert {leaf.digest for leaf in infected.leaves} - {leaf.digest for leaf in clean.leaves}
    assert any(b"begin 644 eicar.com" in leaf.payload for leaf in infected.leaves)


def test_missing_close_boundary_is_not_trusted() -> None:
    assert not agree(multipart(TEXT_PART, ZIP_PART, close=False)).trustworthy


@pytest.mark.parametrize("bad", ["QUJD!QUJD\r\n", "QUJDQ\r\n", "QQ==QUJD\r\n", "QU=JD\r\n"])
def test_bad_base64_is_not_trusted(bad: str) -> None:
    part = "Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\n" + bad
    assert not agree(multipart(TEXT_PART, part)).trustworthy


def test_base64_with_blanks_is_fine() -> None:
    part = "Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJD \r\n"
    parts = agree(multipart(TEXT_PART, part), defects=True)  # to the email package: a defect
    assert parts.trustworthy and parts.leaves[-1].payload == b"ABC"


def test_too_many_parts_are_not_trusted() -> None:
    parts = agree(multipart(*[f"Content-Type: text/plain\r\n\r\n{i}" for i in range(300)]))
    assert not parts.trustworthy and len(parts.leaves) == MAX_LEAVES
    assert agree(multipart(*[TEXT_PART] * MAX_LEAVES)).trustworthy


@pytest.mark.parametrize("line", ["--B1", "---b1", "(x)--b1", "  --b1", "--b1x", "--b1-- x"])
def test_lines_clamd_may_take_for_a_boundary_are_not_trusted(line: str) -> None:
    parts = agree(multipart(f"Content-Type: text/plain\r\n\r\nabove\r\n{line}\r\nbelow",
                            ZIP_PART))
    assert not parts.trustworthy


def test_boundary_lines_with_trailing_blanks_are_not_trusted() -> None:
    message = multipart(TEXT_PART, ZIP_PART).replace(b"--b1\r\n", b"--b1 \r\n", 1)
    assert not agree(message).trustworthy


@pytest.mark.parametrize("message", [
    multipart(TEXT_PART, head="Content-Type: text/plain\r\n"),  # the first one counts
    multipart(TEXT_PART, ZIP_PART.replace("base64", "base64\r\nContent-Transfer-Encoding: 7bit")),
    multipart("Content-Type: text/plain\r\nContent-Transfer-Encoding: x-rot13\r\n\r\nuryyb"),
    multipart(TEXT_PART, boundary="x" * 71),
    multipart(TEXT_PART, boundary="two words"),
    multipart(TEXT_PART, boundary="b1 "),  # the email package strips the blank, clamd may not
    multipart(TEXT_PART, head="Content-Transfer-Encoding:\r\n"),
    multipart(TEXT_PART).replace(b'; boundary="b1"', b'; boundary="b1"; boundary="b2"'),
    multipart(TEXT_PART).replace(b'; boundary="b1"', b""),  # no boundary
    multipart(TEXT_PART).replace(b'boundary="b1"', b'boundary=""'),
    multipart(TEXT_PART, "Content-Type: text/plain\r\nX-Bad: a\x00b\r\n\r\nnul"),
    multipart(TEXT_PART, "Content-Type: text/plain\r\n no field to continue\r\n\r\nx"),
    multipart(TEXT_PART, "Content-Type: text/plain\r\nnot a header line\r\n\r\nx"),
    multipart(TEXT_PART, "Content-Type: text/plain\r\n: no name\r\n\r\nx"),
    multipart(TEXT_PART, "Content-Type: multi part/mixed; boundary=b1\r\n\r\nx"),
    multipart(TEXT_PART, "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64"
                         "\r\n\r\nU3ViamVjdDogeA0KDQp4"),
    multipart("Content-Type: multipart/mixed; boundary=b1x\r\n\r\n--b1x\r\n" + TEXT_PART
              + "\r\n--b1x--"),  # an inner boundary holding the outer one
    multipart(TEXT_PART, "Content-Type: text/plain\r\nContent-Transfer-Encoding: "
                         "quoted-printable\r\n\r\nbroken =Z escape"),
    multipart(TEXT_PART, ZIP_PART).replace(b"--b1\r\n", b"--b1\r\n--b1\r\n", 1),  # twice
    multipart(TEXT_PART, ZIP_PART).replace(b"hello", b"hel\rlo"),  # bare CR
    b"From someone  Thu Jul 31 13:49:50 2008\r\n" + multipart(TEXT_PART),
])
def test_odd_messages_are_not_trusted(message: bytes) -> None:
    assert not agree(message).trustworthy


def test_nesting_deeper_than_the_limit_is_not_trusted() -> None:
    def nest(levels: int) -> bytes:
        inner = TEXT_PART
        for i in range(levels):
            inner = (f'Content-Type: multipart/mixed; boundary="n{i:03d}"\r\n\r\n--n{i:03d}\r\n'
                     f"{inner}\r\n--n{i:03d}--")
        return crlf("Subject: deep\r\n" + inner)

    assert not split_parts(nest(MAX_DEPTH + 1)).trustworthy
    assert agree(nest(MAX_DEPTH)).trustworthy


def test_rfc2231_filenames_are_read_like_the_email_package() -> None:
    part = ("Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n"
            "Content-Disposition: attachment; filename*=utf-8''%E2%9C%93.zip\r\n\r\nQUJD")
    parts = agree(multipart(TEXT_PART, part))
    assert parts.trustworthy and parts.leaves[-1].filename == "\u2713.zip"


def test_delivery_status_is_one_leaf_with_its_bytes() -> None:
    """The email package splits it into header blocks with empty payloads: no bytes of it
    would be in a key. Here it is a leaf of its own (the one intended difference)."""
    status = "Reporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; a@example.org"
    message = multipart(TEXT_PART, "Content-Type: message/delivery-status\r\n\r\n" + status)
    parts = split_parts(message)
    assert parts.trustworthy and parts.leaves[-1].payload == status.encode()
    assert parts.leaves[-1].content_type == "message/delivery-status"


def test_forwarded_message_leaves_and_digest_defaults() -> None:
    inner = "Subject: inner\r\n" + multipart(TEXT_PART, ZIP_PART, boundary="c2").decode(
        ).split("\r\n", 1)[1]
    parts = agree(multipart(TEXT_PART, "Content-Type: message/rfc822\r\n\r\n" + inner))
    assert parts.trustworthy and len(parts.leaves) == 3
    digest_msg = multipart("\r\n" + "Subject: a\r\n\r\nfirst", "\r\n" + "Subject: b\r\n\r\nsecond"
                           ).replace(b"multipart/mixed", b"multipart/digest")
    assert [leaf.payload for leaf in agree(digest_msg).leaves] == [b"first", b"second"]


@pytest.mark.parametrize("message", [b"", b"Subject: x\r\n", b"Subject: x\r\n\r\n", b"\r\nbody",
                                     b"no headers at all\r\n", b"Content-Type: text/plain"])
def test_degenerate_messages(message: bytes) -> None:
    assert agree(message).leaves


# -- what a split may cost the event loop ---------------------------------------------------

def test_a_gzip_that_inflates_far_or_a_tar_of_many_members_is_listed_off_the_loop() -> None:
    """Inflating is C but not free: past INLINE_INFLATE the gzip is the child's, which
    inflates to tarball.MAX_BYTES; and a tar's headers are read in Python, charged each."""
    import gzip
    import tarfile

    bomb = crlf(with_attachment("b", "see", gzip.compress(bytes(64 << 20)), "zeros.gz"))
    with pytest.raises(TooComplex):
        split_parts(bomb, INLINE_STEPS)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(500):
            tar.addfile(tarfile.TarInfo(f"f{i}.txt"), io.BytesIO(b""))
    many = crlf(with_attachment("m", "see", buf.getvalue(), "many.tar"))
    with pytest.raises(TooComplex):
        split_parts(many, INLINE_STEPS)
    assert [len(a.entries) for a in split_parts(many).archives] == [500]

@pytest.mark.parametrize("make", [pathological.tiny_parts, pathological.many_headers,
                                  pathological.many_part_headers, pathological.folded_header])
def test_complex_structure_spends_the_inline_budget(make: Any) -> None:
    """Structure, not size, is what costs: each of these is given up within its budget (to
    be split off the loop), and split in full without one."""
    message = make(1 << 20) if make is not pathological.folded_header else make(20_000)
    with pytest.raises(TooComplex):
        split_parts(message, INLINE_STEPS)
    assert split_parts(message).body_digest == body_digest(message)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_ordinary_messages_split_within_the_budget(path: Path) -> None:
    message = crlf(path.read_bytes())
    assert split_parts(message, INLINE_STEPS) == split_parts(message)
    big = crlf(with_attachment("big", "see attached", bytes(range(256)) * 3000, "big.bin"))
    assert split_parts(big, INLINE_STEPS) == split_parts(big)
