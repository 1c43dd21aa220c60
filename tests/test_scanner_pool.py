"""Several clamd and spamd addresses per scanner: used in turn, skipped while down, so a site
can add scanner hosts. Real daemons; "down" is an address where nothing listens."""

from __future__ import annotations

import asyncio

import pytest

from filters.clamav import ClamAVFilter, ClamdClient, ClamdError, ClamdPool
from filters.spamassassin import SpamAssassinFilter
from relay.config.clamav import ClamAVConfig
from relay.config.spamassassin import SpamAssassinConfig
from relay.service.scanners import build_clamav
from tests.make_fixtures import EICAR
from tests.services import Clamd, Spamd, free_port

pytest_plugins = ["tests.scanner_fixtures"]  # real clamd and spamd, session-wide


def dead() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


def test_clamd_pool_skips_a_dead_clamd(clamd: Clamd) -> None:
    async def go() -> None:
        down = ClamdClient(dead(), timeout=5)
        up = ClamdClient(clamd.address, timeout=5)
        pool = ClamdPool([down, up], down_for=60)
        for _ in range(4):
            assert await pool.instream(b"hello, clean") is None
            assert (await pool.instream(EICAR) or "").startswith("Floodgate.Test.EICAR")
        assert up.scans == 8
        assert down.scans == 1  # tried once, then skipped while marked down
        assert (await pool.version()).startswith("ClamAV ")

    asyncio.run(go())


def test_clamd_pool_uses_both_in_turn(clamd: Clamd) -> None:
    async def go() -> None:
        a, b = ClamdClient(clamd.address), ClamdClient(clamd.unix_address)
        pool = ClamdPool([a, b])
        for _ in range(6):
            assert await pool.instream(b"clean") is None
        assert (a.scans, b.scans) == (3, 3)

    asyncio.run(go())


def test_reachable_says_which_address_is_down(clamd: Clamd, spamd: Spamd) -> None:
    """What the scanner-up gauge reads: the last call's fate per address, a lone clamd's
    too (a rotation of one marks nothing down, as there is nowhere else to go), and it does
    not lapse with `down_for`: a dead address stays down until it answers."""
    async def go() -> None:
        lone = ClamAVFilter(ClamdClient(dead(), timeout=2))
        assert lone.reachable() == {lone.client.address: True}  # nothing says otherwise yet
        with pytest.raises(ClamdError):
            await lone.client.instream(b"x")
        assert lone.reachable() == {lone.client.address: False}

        down = dead()
        pool = ClamAVFilter(ClamdPool([ClamdClient(down), ClamdClient(clamd.address)],
                                      down_for=0))
        assert await pool.client.instream(b"clean") is None
        assert pool.reachable() == {down: False, clamd.address: True}

        spam = SpamAssassinFilter([down, spamd.address], timeout=60)
        await spam.score(b"Subject: hi\r\n\r\nJust a note.\r\n")
        assert spam.reachable() == {down: False, spamd.address: True}

    asyncio.run(go())


def test_clamd_pool_all_down_is_an_error() -> None:
    async def go() -> None:
        pool = ClamdPool([ClamdClient(dead(), timeout=2), ClamdClient(dead(), timeout=2)])
        with pytest.raises(ClamdError, match="no clamd reachable"):
            await pool.instream(b"x")

    asyncio.run(go())


def test_config_list_builds_a_pool(clamd: Clamd) -> None:
    f = build_clamav(ClamAVConfig(address=[dead(), clamd.address]))
    assert isinstance(f, ClamAVFilter) and isinstance(f.client, ClamdPool)
    with pytest.raises(ValueError):
        ClamAVConfig(address=[])
    with pytest.raises(ValueError):
        SpamAssassinConfig(address=["127.0.0.1:783", "no-port"])


def test_spamd_list_skips_a_dead_spamd(spamd: Spamd) -> None:
    async def go() -> None:
        down = dead()
        f = SpamAssassinFilter([down, spamd.address], timeout=60)
        message = b"Subject: hello\r\nFrom: a@b.example\r\n\r\nJust a note.\r\n"
        for _ in range(3):
            result = await f.score(message)
            assert result.score < 5
        assert f.rotation.down() == [down]

    asyncio.run(go())
