"""The console in a real browser (Debian's chromium, headless, driven by Playwright): a host
blocked by real traffic through a running relay shows up, its page explains the score, and
the unblock button lets it back in. Screenshots land in var/artefacts/."""

from __future__ import annotations

import re
import shutil
import smtplib
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from blocklist import blocks
from relay.store.database import make_engine
from tests.support import ROOT, wait_until
from tests.test_blocking import dictionary_attack, refused_at_connect
from tests.test_smtp import ALIASES, MESSAGE
from tests.web_support import ADMIN, ADMIN_NAME, READ, gate_caught_up, relay_extra, web_starter

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
ARTEFACTS = ROOT / "var" / "artefacts"


@pytest.fixture
def start_web():  # type: ignore[no-untyped-def]
    yield from web_starter()


def sign_in(page: Page, url: str, token: str) -> None:
    page.goto(url + "/")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", token)
    page.click("#login button[type=submit]")
    expect(page.locator("#app")).to_be_visible()


def keep(page: Page, tmp_path: Path, name: str) -> None:
    """A full-page screenshot in the test's tmp dir, copied to var/artefacts/."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTEFACTS / name)


def test_console_shows_a_real_attacker_and_unblocks_it(start_relay, start_web, sqlite_url,
                                                       tmp_path) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES, extra=relay_extra())
    web = start_web(relay.config)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10,
                      source_address=("127.0.0.20", 0)) as smtp:  # one good message, queued
        smtp.sendmail("a@sender.test", ["alice@example.org"], MESSAGE)
    unknown = dictionary_attack(relay, "127.0.0.5").count(550)  # then 554: blocked
    engine = make_engine(sqlite_url)
    wait_until(lambda: blocks.active_blocks(engine), what="the scorer to block 127.0.0.5")
    engine.dispose()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        viewport = {"width": 1366, "height": 900}  # a laptop screen
        reader = browser.new_page(viewport=viewport)
        sign_in(reader, web.url, READ)
        expect(reader.locator('#blocked tr[data-network="127.0.0.5"]')).to_be_visible()
        expect(reader.locator("button.unblock")).to_have_count(0)  # read token: no button
        expect(reader.locator("#block-form")).to_be_hidden()
        reader.close()

        page = browser.new_page(viewport=viewport)
        sign_in(page, web.url, ADMIN)
        expect(page.locator("#who")).to_have_text(f"{ADMIN_NAME} (admin)")
        row = page.locator('#blocked tr[data-network="127.0.0.5"]')
        expect(row).to_contain_text(re.compile(r"unknown_rcpt=\d+"))  # scored mid-attack too
        expect(row).to_contain_text("auto")
        expect(row.locator("td.left")).to_contain_text("m")  # time left, counting down
        attacker = page.locator('#hosts tr[data-host="127.0.0.5"]')
        expect(attacker).to_contain_text(f"unknown_rcpt {unknown}")
        expect(page.locator("#chart svg rect").first).to_be_visible()
        expect(page.locator("#legend")).to_contain_text("unknown_rcpt")
        expect(page.locator("#legend")).to_contain_text("accepted")
        expect(page.locator("#queue")).to_contain_text("1 queued")
        keep(page, tmp_path, "web-console.png")

        attacker.locator("a").click()
        expect(page.locator("#state")).to_have_text("blocked")
        expect(page.locator("#why")).to_contain_text(re.compile(r"unknown_rcpt=\d+"))
        expect(page.locator("#reasons")).to_contain_text("unknown_rcpt")
        expect(page.locator("#score-text")).to_contain_text(
            re.compile(r"score \d+ \(blocks at 10\)"))
        keep(page, tmp_path, "web-console-host.png")

        page.goto(web.url + "/console/")  # the token stays for the tab
        row = page.locator('#blocked tr[data-network="127.0.0.5"]')
        row.locator("button.unblock").click()
        expect(page.locator("#action-msg")).to_have_text("unblocked 127.0.0.5")
        expect(row).to_have_count(0)
        expect(page.locator("#audit")).to_contain_text("unblock")
        browser.close()

    gate_caught_up(relay, sqlite_url)
    assert refused_at_connect(relay, "127.0.0.5") is None
    assert (ARTEFACTS / "web-console.png").stat().st_size > 10_000
