"""Connection limits per client and in total, and the pregreet test, against a running
relay; the IPv6 /64 grouping on the limiter itself (loopback has one IPv6 address)."""

from __future__ import annotations

import pytest

from relay.config.limits import LimitsConfig
from relay.hosts.limits import ConnectionLimiter
from tests.hardening_support import Raw, events
from tests.support import unref, wait_until


def limits(**keys: object) -> str:
    body = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in keys.items())
    return "[limits]\nexempt = []\n" + body + "\n"


def test_concurrent_connections_per_client(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, extra=limits(max_per_client=2))
    first, second = Raw(relay.port), Raw(relay.port)
    assert first.banner.startswith("220 ") and second.banner.startswith("220 ")
    with Raw(relay.port) as third:
        assert third.banner.startswith("421 4.7.0 Too many connections from your host")
        assert third.closed()
    first.cmd("QUIT")
    first.close()

    def admitted() -> bool:
        with Raw(relay.port) as again:
            return again.banner.startswith("220 ")

    wait_until(admitted, what="a free slot once one connection ended")
    second.close()
    [row] = events(sqlite_url, lambda e: e.reason == "rate_limit")
    assert (row.stage, row.action, row.code) == ("connect", "tempfail", 421)


def test_connection_rate_per_client(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, extra=limits(connection_rate=3, rate_window="1h"))
    for _ in range(3):
        with Raw(relay.port) as raw:
            assert raw.banner.startswith("220 ")
    with Raw(relay.port) as raw:
        assert raw.banner.startswith("421 4.7.0 Too many connections from your host, slow down")
    events(sqlite_url, lambda e: e.reason == "rate_limit")


def test_global_cap(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, extra=limits(max_connections=2))
    held = [Raw(relay.port), Raw(relay.port)]
    with Raw(relay.port) as raw:
        assert unref(raw.banner) == "421 4.3.2 Too many connections, try again later"
    for h in held:
        h.close()
    events(sqlite_url, lambda e: e.reason == "busy")


def test_loopback_is_exempt_by_default(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, extra="[limits]\nmax_per_client = 1\n")
    held = [Raw(relay.port) for _ in range(3)]
    assert all(h.banner.startswith("220 ") for h in held)
    for h in held:
        h.close()


def test_pregreet_is_dropped_and_recorded(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, extra=limits(greet_wait="10s", pregreet_action="drop"))
    with Raw(relay.port, greet=False) as raw:
        raw.send(b"EHLO eager.test\r\n")  # before the banner: the greet_wait sees it
        assert raw.reply().startswith("521 5.5.1 Protocol error")
        assert raw.closed()
    [row] = events(sqlite_url, lambda e: e.reason == "pregreet")
    assert (row.stage, row.action) == ("connect", "reject")


def test_pregreet_recorded_only(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, extra=limits(greet_wait="10s"))
    with Raw(relay.port, greet=False) as raw:
        raw.send(b"EHLO eager.test\r\n")
        assert raw.reply().startswith("220 ")
        assert raw.reply().startswith("250 ")
    [row] = events(sqlite_url, lambda e: e.reason == "pregreet")
    assert row.action == "accept"


def test_polite_client_waits_out_the_greet_wait(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, extra=limits(greet_wait="0.3s"))
    with Raw(relay.port) as raw:
        assert raw.banner.startswith("220 ")
        assert raw.cmd("EHLO polite.test").startswith("250 ")


def test_ipv6_counts_per_64_and_ipv4_per_address() -> None:
    limiter = ConnectionLimiter(LimitsConfig(exempt=[], max_per_client=2), ipv6_prefix=64)
    assert limiter.admit("2001:db8:1:2::1") is None
    assert limiter.admit("2001:db8:1:2:ffff::9") is None
    refused = limiter.admit("2001:db8:1:2:abcd::1")
    assert refused is not None and refused.reason == "rate_limit"
    assert limiter.admit("2001:db8:1:3::1") is None  # the next /64 is someone else
    assert limiter.admit("192.0.2.1") is None and limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") is not None
    assert limiter.admit("192.0.2.2") is None
    limiter.release("2001:db8:1:2::1")
    assert limiter.admit("2001:db8:1:2:abcd::1") is None


def test_rate_window_slides() -> None:
    now = [0.0]
    limiter = ConnectionLimiter(LimitsConfig(exempt=[], connection_rate=2, rate_window=10),
                                clock=lambda: now[0])
    for _ in range(2):
        assert limiter.admit("192.0.2.1") is None
        limiter.release("192.0.2.1")
    assert limiter.admit("192.0.2.1") is not None
    now[0] = 10.5
    assert limiter.admit("192.0.2.1") is None


@pytest.mark.parametrize("bad", ['reply_timeout = "10m"', 'exempt = ["not-a-net"]',
                                 "max_per_client = -1", "unknown = 1", "null_sender_share = 1.5"])
def test_limits_config_is_checked(bad: str) -> None:
    import tomllib

    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        LimitsConfig.model_validate(tomllib.loads(bad))
