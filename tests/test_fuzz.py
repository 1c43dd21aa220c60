"""Property-based tests (hypothesis): the DATA scanner against a line-by-line model, the
address checks, the MIME walk, and command handling against a running relay.

`scripts/fuzz` runs the same properties with the `fuzz` profile (many more examples, the
seed corpus in fixtures/messages/, failures kept in .hypothesis/ and replayed first).
"""

from __future__ import annotations

import itertools
import os
import re
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from filters.address import normalise_domain, split_address
from filters.base import Action
from filters.mime import split_parts
from filters.recipients import RecipientFilter
from relay.smtp.addresses import routing_problem, size_problem, unquote_local
from relay.smtp.body import MAX_LINE, BareNewline, DataScanner, Problem
from tests.hardening_support import ALIASES, Raw

settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile("fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", 20_000)),
                          deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CORPUS = sorted((Path(__file__).parent.parent / "fixtures" / "messages").glob("*.eml"))


# -- the DATA scanner -------------------------------------------------------------------

def model(stream: bytes) -> tuple[bool, bytes, bytes, bool, bool]:
    """Line by line, as RFC 5321 reads: (ended, content, rest, bare, too_long)."""
    lines = []
    pos = 0
    while True:
        i = stream.find(b"\r\n", pos)
        if i < 0:
            return False, b"", b"", False, False
        line = stream[pos:i]
        pos = i + 2
        if line == b".":
            break
        lines.append(line)
    data = b"".join(x + b"\r\n" for x in lines)
    bare = (data.count(b"\r") != data.count(b"\r\n") or data.count(b"\n") != data.count(b"\r\n")
            or b"\0" in data)
    unstuffed = [x[1:] if x.startswith(b".") else x for x in lines]
    too_long = any(len(x) > MAX_LINE for x in unstuffed)
    return True, b"".join(x + b"\r\n" for x in unstuffed), stream[pos:], bare, too_long


def normalize_model(stream: bytes) -> tuple[bool, bytes, bytes, bool, bool]:
    """bare_newline = "normalize", as Postfix 3.9 reads: a bare LF or CR ends a line too;
    only a "." line between two CRLFs ends the data; other "." lines next to a bare line
    ending are dropped; a NUL refuses the message. (ended, content, rest, nul, too_long)"""
    prev = b"\r\n"
    pos = 0
    lines = []
    for m in re.finditer(rb"\r\n|\r|\n", stream):
        line, end = stream[pos:m.start()], m.group()
        if end == b"\r" and m.end() == len(stream):
            break  # may be the first half of a CRLF still to come
        pos = m.end()
        if line == b"." and prev == end == b"\r\n":
            data = stream[:m.start() - 1]
            unstuffed = [x[1:] if x.startswith(b".") else x for x in lines if x != b"."]
            return (True, b"".join(x + b"\r\n" for x in unstuffed), stream[pos:],
                    b"\0" in data, any(len(x) > MAX_LINE for x in unstuffed))
        lines.append(line)
        prev = end
    return False, b"", b"", False, False


def scan(stream: bytes, cuts: list[int], limit: int | None = None,
         mode: BareNewline = "reject") -> tuple[DataScanner, bytes | None]:
    scanner = DataScanner(limit=limit, bare_newline=mode)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for a, b in itertools.pairwise(bounds):
        rest = scanner.feed(stream[a:b])
        if rest is not None:
            return scanner, rest + stream[b:]
    return scanner, None


SMTP_BYTES = st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"\0", b"a",
                                       b"xyz", b"\r\n.\r\n", b"\n.\n", b"x" * 500]),
                      max_size=40).map(b"".join)


@given(SMTP_BYTES | st.binary(max_size=3000), st.lists(st.integers(0, 5000), max_size=8))
@example(b"\r\n.\r\n", [])
@example(b".\r\nNOOP\r\n", [1])
@example(b"a\r\n.\rb\r\n.\r\n", [4])
@example(b"." + b"x" * 998 + b"\r\n.\r\n", [500])
@example(b"a\n.\r\n.\r\n", [2])
@example(b"a\r\r\n.\r\n", [2])
@example(b"a\r" + b"x" * 1200 + b"\r\n.\r\n", [1])
def test_scanner_matches_the_line_model_in_normalize_mode(stream: bytes, cuts: list[int]) -> None:
    ended, content, rest, nul, too_long = normalize_model(stream)
    scanner, got_rest = scan(stream, cuts, mode="normalize")
    assert scanner.done == ended == (got_rest is not None)
    if not ended:
        return
    assert got_rest == rest
    assert not scanner.bare
    if too_long:
        assert scanner.refused in (Problem.TOO_LONG, Problem.NUL)
    elif nul:
        assert scanner.refused is Problem.NUL
    else:
        assert scanner.refused is Problem.NONE
        assert scanner.content() == content
        assert content.count(b"\r") == content.count(b"\n") == content.count(b"\r\n")


@given(SMTP_BYTES | st.binary(max_size=3000), st.lists(st.integers(0, 5000), max_size=8))
@example(b"\r\n.\r\n", [])
@example(b".\r\nNOOP\r\n", [1])
@example(b"a\r\n.\rb\r\n.\r\n", [4])
@example(b"." + b"x" * 998 + b"\r\n.\r\n", [500])
def test_scanner_matches_the_line_model(stream: bytes, cuts: list[int]) -> None:
    ended, content, rest, bare, too_long = model(stream)
    scanner, got_rest = scan(stream, cuts)
    assert scanner.done == ended == (got_rest is not None)
    if not ended:
        return
    assert got_rest == rest
    if too_long:
        assert scanner.refused in (Problem.TOO_LONG, Problem.BARE)
    elif bare:
        assert scanner.refused is Problem.BARE
    else:
        assert scanner.refused is Problem.NONE
        assert scanner.content() == content


@pytest.mark.parametrize("mode", ["normalize", "reject"])
@given(body=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=8))
def test_stuffed_data_round_trips_and_ends_only_at_the_real_dot(
        mode: BareNewline, body: bytes, cuts: list[int]) -> None:
    # what a client sends: every line that starts with a dot gets another one
    stream = b"\r\n".join(b"." + x if x.startswith(b".") else x for x in body.split(b"\r\n"))
    scanner, rest = scan(stream + b"\r\n.\r\nQUIT\r\n", cuts, limit=1000, mode=mode)
    assert rest == b"QUIT\r\n"
    assert sum(map(len, scanner.parts)) <= 1000 + MAX_LINE + 2
    assert (scanner.size > 1000) == (scanner.problem is Problem.TOO_MUCH) or \
        scanner.problem is Problem.TOO_LONG
    if scanner.refused is Problem.NONE:
        if mode == "reject" or not re.search(rb"[^\r]\n|^\n|\r(?!\n)", body + b"\r\n"):
            assert scanner.content() == body + b"\r\n"
        else:  # normalize: bare line endings became CRLF
            assert scanner.content() == normalize_model(stream + b"\r\n.\r\n")[1]


# -- addresses --------------------------------------------------------------------------

HOSTED = {"example.org", "xn--bcher-kva.test"}
recipients = RecipientFilter(hosted=HOSTED.__contains__, known=lambda local, domain: True)
ATOM = st.text(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~.\"@[]:,\\ ",
               min_size=0, max_size=20)
DOMAINS = st.sampled_from(["example.org", "EXAMPLE.ORG", "example.org.", "bücher.test",
                           "xn--bcher-kva.test", "evil.test", "[127.0.0.1]", "example.org@x",
                           "example.org.evil.test", "exämple.org", ""])


def accepted(address: str) -> bool:
    if size_problem(address, sender=False) or routing_problem(address):
        return False
    return recipients.decide(address).action == Action.ACCEPT


@given(ATOM, st.sampled_from(["@", "@@", "%", "!", ""]), ATOM, DOMAINS)
@example("victim%evil.test", "@", "", "example.org")
@example('"victim@evil.test"', "@", "", "example.org")
def test_nothing_outside_the_hosted_domains_is_ever_accepted(
        local: str, glue: str, more: str, domain: str) -> None:
    address = f"{local}{glue}{more}@{domain}"
    if accepted(address):
        parsed = split_address(address)
        assert parsed is not None and parsed[1] in HOSTED
        assert not set(unquote_local(address.rpartition("@")[0])) & set("%!@")
        assert len(address) <= 254


@given(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}",
                     fullmatch=True) | st.text(max_size=30))
def test_domain_normalisation_is_idempotent(domain: str) -> None:
    once = normalise_domain(domain)
    assert normalise_domain(once) == once


def test_u_label_and_a_label_agree() -> None:
    assert normalise_domain("Bücher.Test.") == normalise_domain("XN--BCHER-KVA.test")


# -- the MIME walk ----------------------------------------------------------------------

MIME_BITS = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"--b\r\n", b"--b--\r\n", b"\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Type: message/rfc822\r\n", b"begin 644 x.zip\r\n", b"end\r\n", b"QUJD=\r\n",
    b"=41=\r\n", b"Content-Type: text/plain; charset=\"utf-8\r\n", b"\xff\xfe\x00",
    b"Content-Disposition: attachment; filename*=utf-8''%E2%9C%93.zip\r\n",
])


@given(st.lists(MIME_BITS, max_size=60).map(b"".join) | st.binary(max_size=2000))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_mime_walk_never_raises(message: bytes) -> None:
    parts = split_parts(message)
    assert len(parts.leaves) <= 256


def test_mime_walk_on_the_seed_corpus() -> None:
    for path in CORPUS:
        data = path.read_bytes()
        assert split_parts(data).leaves, path.name
        for cut in (len(data) // 3, len(data) // 2):  # truncated mail is normal mail too
            split_parts(data[:cut])


# -- commands against the running relay -------------------------------------------------

REPLY = re.compile(r"^[2-5]\d\d[ -]")
VERBS = st.sampled_from(["EHLO", "HELO", "MAIL FROM:", "RCPT TO:", "DATA", "RSET", "NOOP",
                         "VRFY", "EXPN", "HELP", "AUTH", "STARTTLS", "BDAT", "XCLIENT", "",
                         "mail from:", "QUIT"])
ARGS = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=80)


@pytest.mark.parametrize("mode", ["normalize", "reject"])
@given(commands=st.lists(st.tuples(VERBS, ARGS), min_size=1, max_size=12))
@example(commands=[("EHLO", "\r\n")])  # found in CI: "EHLO " and an empty line, two replies
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_command_sequence_gets_well_formed_replies(
        start_relay, sqlite_url, mode: str, commands: list[tuple[str, str]]) -> None:  # type: ignore[no-untyped-def]
    relay = _shared_relay(start_relay, sqlite_url, mode)
    raw = Raw(relay.port)
    try:
        # An argument holding CRLF makes several command lines: each gets its own reply.
        lines = [part for verb, arg in commands
                 for part in (f"{verb} {arg}" if arg else verb).split("\r\n")]
        for line in lines:
            try:
                raw.send(line.encode() + b"\r\n")
                reply = raw.reply()
            except (ConnectionError, OSError):
                return  # the relay hung up (QUIT, bare newline, too many bad commands)
            assert REPLY.match(reply), (line, reply)
            if reply.startswith("354"):  # a bare LF: a line ending or a refusal, by mode
                raw.send(b"Subject: fuzz\r\n\r\nbody\nmore\r\n.\r\n")
                assert REPLY.match(raw.reply())
            if reply[:3] in ("221", "421", "521") or reply.startswith(
                    ("550 5.5.2", "502 5.5.1 Too many unrecognized")):
                return  # replies after which the relay hangs up
        raw.send(b"NOOP\r\n")
        assert raw.reply().startswith("250")  # still in step with the client
    finally:
        raw.close()


_relays: dict[str, object] = {}


def _shared_relay(start_relay, sqlite_url, mode: str):  # type: ignore[no-untyped-def]
    """One relay for all of hypothesis's examples in a test (the fixture is per test)."""
    key = f"{id(start_relay)} {mode}"
    if key not in _relays:
        _relays.clear()
        # the session error limits would cut a long random sequence off with 421 at any
        # command (tests/test_sessions.py tests them); here: replies stay well-formed
        _relays[key] = start_relay(sqlite_url, aliases=ALIASES, extra=(
            f'[limits]\nbare_newline = "{mode}"\n'
            "smtpd_soft_error_limit = 10000\nsmtpd_hard_error_limit = 10000\n"))
    return _relays[key]
