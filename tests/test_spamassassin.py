"""SpamAssassin filter against a real spamd (--local), thresholds, headers, and faults."""

from __future__ import annotations

import asyncio
import logging

import aiospamc.connections
import aiospamc.frontend
import pytest

from filters.base import Action, Context, Verdict
from filters.failure import UNSCANNED_HEADER
from filters.headers import apply_headers, header_names, split_head
from filters.spamassassin import SpamAssassinFilter, SpamResult, Thresholds
from filters.verdict_cache import VerdictCache
from tests.make_fixtures import GTUBE
from tests.services import MESSAGES, FakeService, Spamd, free_port

pytest_plugins = ["tests.scanner_fixtures"]  # real clamd and spamd, session-wide


def load(name: str) -> bytes:
    return (MESSAGES / name).read_bytes().replace(b"\n", b"\r\n")


def check(f: SpamAssassinFilter, content: bytes, rcpts: list[str] | None = None) -> Verdict:
    v = asyncio.run(f.check(Context(client="192.0.2.7", rcpts=rcpts or ["bob@example.org"],
                                    content=content)))
    assert v is not None
    return v


def score_of(spamd: Spamd, name: str) -> float:
    f = SpamAssassinFilter(spamd.address, timeout=30)
    return asyncio.run(f.score(load(name))).score


def headers_of(v: Verdict) -> dict[str, str]:
    return dict(v.headers)


# -- real spamd ----------------------------------------------------------------------------

def test_gtube_refused(spamd: Spamd) -> None:
    v = check(SpamAssassinFilter(spamd.address, timeout=30), load("gtube.eml"))
    assert v.action == Action.REJECT and (v.code, v.status, v.reason) == (550, "5.7.1", "spam")
    assert "GTUBE" in v.detail and v.reply.startswith("550 5.7.1 Message refused as spam")


def test_debian_samples_get_their_outcome_under_default_thresholds(spamd: Spamd) -> None:
    f = SpamAssassinFilter(spamd.address, timeout=30, tag_score=5.0, reject_score=10.0)
    spam = check(f, load("sample-spam.eml"))
    ham = check(f, load("sample-nonspam.eml"))
    assert spam.action == Action.REJECT and spam.reason == "spam"
    assert ham.action == Action.ACCEPT and ham.reason == "spam_checked"
    h = headers_of(ham)
    assert h["X-Spam-Flag"] == "NO" and h["X-Spam-Status"].startswith("No, score=")
    assert float(h["X-Spam-Score"]) < 5.0


def test_clean_message_gets_the_x_spam_headers(spamd: Spamd) -> None:
    v = check(SpamAssassinFilter(spamd.address, timeout=30), load("clean.eml"))
    assert v.action == Action.ACCEPT
    assert [n for n, _ in v.headers] == ["X-Spam-Flag", "X-Spam-Score", "X-Spam-Status"]
    assert "required=5.0" in headers_of(v)["X-Spam-Status"]


def test_thresholds_tag_then_reject(spamd: Spamd) -> None:
    """Thresholds placed around the message's real score: tagged, then refused."""
    s = score_of(spamd, "sample-nonspam.eml")
    tag = SpamAssassinFilter(spamd.address, tag_score=s - 1, reject_score=s + 50)
    v = check(tag, load("sample-nonspam.eml"))
    assert v.action == Action.ACCEPT and v.reason == "spam_tagged"
    assert headers_of(v)["X-Spam-Flag"] == "YES"
    assert headers_of(v)["X-Spam-Status"].startswith("Yes, score=")
    rej = SpamAssassinFilter(spamd.address, tag_score=s - 2, reject_score=s - 1)
    assert check(rej, load("sample-nonspam.eml")).action == Action.REJECT


def test_per_domain_thresholds_strictest_recipient_wins(spamd: Spamd) -> None:
    s = score_of(spamd, "sample-nonspam.eml")
    f = SpamAssassinFilter(spamd.address, tag_score=s + 10, reject_score=s + 20, domains={
        "strict.example": Thresholds(s - 2, s - 1),
        "tagging.example": Thresholds(s - 1, s + 20),
    })
    msg = load("sample-nonspam.eml")
    assert check(f, msg, ["a@example.org"]).reason == "spam_checked"
    assert check(f, msg, ["a@tagging.example"]).reason == "spam_tagged"
    assert check(f, msg, ["a@Mail.Strict.Example"]).action == Action.REJECT  # parent rule
    assert check(f, msg, ["a@example.org", "b@strict.example"]).action == Action.REJECT


def test_threshold_rules_most_specific_and_callable() -> None:
    f = SpamAssassinFilter("127.0.0.1:1", domains={
        "example.org": Thresholds(3, 6), "lists.example.org": Thresholds(8, 20)})
    assert f.thresholds(["x@lists.example.org"]) == Thresholds(8, 20)
    assert f.thresholds(["x@deep.lists.example.org"]) == Thresholds(8, 20)
    assert f.thresholds(["x@example.org"]) == Thresholds(3, 6)
    assert f.thresholds(["x@other.test"]) == Thresholds(5, 10)
    assert f.thresholds(["x@lists.example.org", "y@other.test"]) == Thresholds(5, 10)
    assert f.thresholds([]) == Thresholds(5, 10)
    g = SpamAssassinFilter("127.0.0.1:1", domains=lambda d: Thresholds(1, 2) if d == "a.test"
                           else None)
    assert g.thresholds(["x@a.test"]) == Thresholds(1, 2)
    assert g.thresholds(["x@b.test"]) == Thresholds(5, 10)
    with pytest.raises(ValueError):
        SpamAssassinFilter("127.0.0.1:1", tag_score=6, reject_score=5)


def test_one_client_for_all_messages(spamd: Spamd, monkeypatch: pytest.MonkeyPatch) -> None:
    """No per-message connection managers or SSL contexts (the 60 ms-per-message trap)."""
    f = SpamAssassinFilter(spamd.address, timeout=30)
    (one,) = f.rotation.endpoints
    client, manager = one.client, one.client.connection_manager
    built: list[str] = []
    for name in ("TcpConnectionManager", "UnixConnectionManager"):
        cls = getattr(aiospamc.connections, name)
        monkeypatch.setattr(cls, "__init__", lambda *a, _n=name, **k: built.append(_n))
    monkeypatch.setattr(aiospamc.frontend, "check", lambda *a, **k: built.append("check"))
    monkeypatch.setattr(aiospamc.connections.ssl, "create_default_context",
                        lambda *a, **k: built.append("ssl"))

    async def go() -> list[Verdict | None]:
        return [await f.check(Context(client="x", rcpts=["b@example.org"],
                                      content=load(n))) for n in ("clean.eml", "gtube.eml")]

    first, second = asyncio.run(go())
    assert first.action == Action.ACCEPT and second.action == Action.REJECT
    assert built == [] and one.client is client and one.client.connection_manager is manager
    assert f.requests == 2


def test_sender_x_spam_headers_are_not_believed(spamd: Spamd) -> None:
    forged = (b"X-Spam-Flag: NO\r\nX-Spam-Status: No, score=-100\r\n\tcontinued=1\r\n"
              b"X-Floodgate-Unscanned: nothing to see\r\n" + load("gtube.eml"))
    f = SpamAssassinFilter(spamd.address, timeout=30, reject_score=2000)
    v = check(f, forged)
    assert v.reason == "spam_tagged"
    out = apply_headers(forged, v.headers)
    names = header_names(out)
    assert names.count("X-Spam-Flag") == 1 and names.count("X-Spam-Status") == 1
    assert "X-Floodgate-Unscanned" not in names
    assert out.startswith(b"X-Spam-Flag: YES\r\nX-Spam-Score: 1000.0\r\nX-Spam-Status: Yes,")
    assert split_head(out)[1] == split_head(forged)[1]  # body byte-exact
    assert b"continued=1" not in out and GTUBE.encode() in out


def test_cache_skips_spamd_only_for_the_same_message(spamd: Spamd) -> None:
    """Headers score too: the same body under other headers is another question for spamd;
    the same message (forged X-Spam-* headers aside, spamd never sees them) is not."""
    f = SpamAssassinFilter(spamd.address, timeout=30, cache=VerdictCache[SpamResult]())
    a = check(f, load("gtube.eml"))
    again = check(f, b"X-Spam-Score: -5\r\n" + load("gtube.eml"))
    assert a.action == again.action == Action.REJECT and f.requests == 1
    assert f.cache is not None and f.cache.stats().hits == 1
    other = check(f, b"Subject: another run\r\nTo: x@example.org\r\n"
                  + split_head(load("gtube.eml"))[1])
    assert other.action == Action.REJECT and f.requests == 2


# -- size and faults -----------------------------------------------------------------------

@pytest.mark.parametrize(("policy", "reply"), [
    ("accept", "250 2.0.0"), ("reject", "552 5.3.4"), ("tempfail", "451 4.3.0")])
def test_oversize_policy_needs_no_spamd(policy: str, reply: str) -> None:
    f = SpamAssassinFilter(f"127.0.0.1:{free_port()}", max_size=100, on_oversize=policy)  # type: ignore[arg-type]
    v = check(f, b"Subject: big\r\n\r\n" + b"z" * 500)
    assert v.reply.startswith(reply) and f.requests == 0
    if policy == "accept":
        assert v.headers[0][0] == UNSCANNED_HEADER


def test_spamd_down_tempfails() -> None:
    v = check(SpamAssassinFilter(f"127.0.0.1:{free_port()}", timeout=5), load("clean.eml"))
    assert v.action == Action.TEMPFAIL and v.reason == "spamassassin_error"
    assert v.reply == "451 4.3.0 Temporary failure in spam check, try again later"


def test_spamd_down_accept_mode_says_not_scanned() -> None:
    f = SpamAssassinFilter(f"127.0.0.1:{free_port()}", timeout=5, on_error=Action.ACCEPT)
    v = check(f, load("clean.eml"))
    assert v.action == Action.ACCEPT and v.reason == "spamassassin_unscanned"
    (name, value), = v.headers
    assert name == UNSCANNED_HEADER and value.startswith("spamassassin (")
    assert not any(n.startswith("X-Spam-") for n, _ in v.headers)


def test_spamd_that_hangs_times_out_to_451(caplog: pytest.LogCaptureFixture) -> None:
    with FakeService("hang") as fake:
        f = SpamAssassinFilter(fake.address, timeout=0.5)
        with caplog.at_level(logging.WARNING, logger="floodgate.spamassassin"):
            v = check(f, load("clean.eml"))
        assert v.reply.startswith("451 4.3.0") and "timeout" in v.detail.lower()
        assert fake.wait_closed(1)
    assert fake.received.startswith(b"SYMBOLS SPAMC/1.5\r\n")
    assert any("spamd check failed" in r.message for r in caplog.records)


@pytest.mark.parametrize("reply", [b"garbage\r\n", b"SPAMD/1.5 0 EX_OK\r\n\r\n",
                                   b"SPAMD/1.5 76 Bad header line\r\n\r\n"])
def test_spamd_garbage_is_451(reply: bytes) -> None:
    with FakeService("garbage", reply) as fake:
        v = check(SpamAssassinFilter(fake.address, timeout=5), load("clean.eml"))
    assert v.action == Action.TEMPFAIL and v.reply.startswith("451 4.3.0")
